"""Which face detections ``golden prepare`` keeps, the square areas around them (``face_area``
around a detection, ``panel_area`` the panel square holding it), and where a face area lands in
a resized panel area (:func:`face_box_in_panel`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from backbone_ssl.data.golden_format import PrepareArgs


def face_area(box: tuple[float, float, float, float], w: int, h: int) -> list[int]:
    """Square ``[x1, y1, x2, y2]`` around ``box`` (already inside the ``w`` x ``h`` panel).

    Side ``max(box w, box h)`` rounded up, at most ``min(w, h)``; centred on the box, then shifted
    to lie inside the panel.
    """
    x1, y1, x2, y2 = box
    side = max(1, min(math.ceil(max(x2 - x1, y2 - y1) - 1e-6), w, h))
    fx = min(max(round((x1 + x2 - side) / 2), 0), w - side)
    fy = min(max(round((y1 + y2 - side) / 2), 0), h - side)
    return [fx, fy, fx + side, fy + side]


def panel_area(face: list[int], w: int, h: int) -> list[int]:
    """The panel's largest square (side ``min(w, h)``) containing ``face``: centred in the panel,
    then shifted the least needed."""
    s = min(w, h)
    px = min(max((w - s) // 2, face[2] - s, 0), face[0], w - s)
    py = min(max((h - s) // 2, face[3] - s, 0), face[1], h - s)
    return [px, py, px + s, py + s]


def clip_box(box: tuple[float, ...], w: int, h: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))


def keep_faces(
    dets: list[tuple[float, ...]], w: int, h: int, args: PrepareArgs, c: Counter
) -> list[tuple[float, tuple[float, float, float, float], bool]]:
    """Filter a panel's detections (skips counted in ``c``); returns ``[(conf, box clipped to
    the panel, whether it was clipped)]``, most confident first."""
    kept = []
    for x1, y1, x2, y2, conf in dets:
        box = clip_box((x1, y1, x2, y2), w, h)
        if box[2] <= box[0] or box[3] <= box[1]:
            c["skip_outside_panel"] += 1
            continue
        clipped = box != (x1, y1, x2, y2)
        if conf < args.min_conf:
            c["skip_low_conf"] += 1
        elif max(box[2] - box[0], box[3] - box[1]) < args.min_face:
            c["skip_small_face"] += 1
        else:
            kept.append((conf, box, clipped))
    kept.sort(key=lambda t: (-t[0], t[1]))
    return kept


def face_box_in_panel(panel_area: Sequence[int], face_area: Sequence[int],
                      size: int | tuple[int, int]) -> list[int]:
    """``face_area`` in the pixels of ``panel_area`` resized to ``size`` (``S`` for ``S`` x ``S``,
    or ``(width, height)``), as the panel datasets place it: ``[x1, y1, x2, y2]`` ints, ends
    exclusive, clipped to the resized panel. Each axis has its own scale, so a panel area that is
    not square (squashed by the resize) still gets its face box in the right place."""
    out_w, out_h = (size, size) if isinstance(size, int) else size
    pa, fa = panel_area, face_area
    sx, sy = out_w / (pa[2] - pa[0]), out_h / (pa[3] - pa[1])
    x1, x2 = math.floor((fa[0] - pa[0]) * sx), math.ceil((fa[2] - pa[0]) * sx)
    y1, y2 = math.floor((fa[1] - pa[1]) * sy), math.ceil((fa[3] - pa[1]) * sy)
    return [min(max(x1, 0), out_w), min(max(y1, 0), out_h),
            min(max(x2, 0), out_w), min(max(y2, 0), out_h)]
