"""Property tests (hypothesis): hostile text never becomes a traceback; face boxes stay inside.

- the COMICS face-annotation parser takes arbitrary lines: each line is parsed, or counted as
  skipped under a named reason, never an exception;
- the config loader takes arbitrary YAML text and arbitrary ``key=value`` overrides: a config, or
  one ``UserError`` line, never another exception;
- ``face_area`` / ``panel_area`` never produce a box outside the panel.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backbone_ssl.config import load_config
from backbone_ssl.data.golden_faces import face_area, panel_area
from backbone_ssl.data.golden_format import BookJob, PrepareArgs
from backbone_ssl.data.golden_inputs import read_detections
from backbone_ssl.errors import UserError
from backbone_ssl.methods.byol import BYOLConfig

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

number = st.one_of(st.integers(-10_000, 10_000).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["nan", "inf", "-inf", "1e309", "0x10", "", "abc", "1,5"]))
field = st.one_of(number, st.text(max_size=12))
line = st.one_of(
    st.text(max_size=80),
    st.builds(lambda name, nums: " ".join([name, *nums]),
              st.one_of(st.just("book/3_2.jpg"), st.just("3_2.jpg"), st.just("other/1_1.jpg"),
                        st.text(max_size=15)),
              st.lists(field, min_size=0, max_size=7)),
)


@SETTINGS
@given(lines=st.lists(line, max_size=30))
def test_annotation_parser_parses_or_counts_every_line(tmp_path_factory, lines):
    tmp = tmp_path_factory.mktemp("ann")
    ann = tmp / "book.txt"
    with open(ann, "w", encoding="utf-8", errors="surrogatepass") as f:
        for text in lines:
            f.write(text.replace("\n", " ").replace("\r", " ") + "\n")
    job = BookJob("book", str(tmp), str(ann), str(tmp / "np.txt"), str(tmp / "out"),
                  PrepareArgs(0.9, 32, 3, 64), {})
    counts: Counter = Counter()
    boxes = read_detections(job, counts)  # must not raise
    kept = sum(len(v) for v in boxes.values())
    skipped = sum(v for k, v in counts.items() if k.startswith("skip_"))
    assert kept + skipped == counts["lines"]  # every non-blank line: parsed or counted skipped
    for dets in boxes.values():
        for x1, y1, x2, y2, conf in dets:
            assert all(math.isfinite(v) for v in (x1, y1, x2, y2, conf))
            assert x2 > x1 and y2 > y1


@settings(max_examples=400, deadline=None)
@given(w=st.integers(1, 4000), h=st.integers(1, 4000),
       box=st.tuples(*[st.floats(0, 1, allow_nan=False)] * 4))
def test_face_and_panel_areas_stay_inside_the_panel(w, h, box):
    fx1, fx2 = sorted((box[0] * w, box[2] * w))
    fy1, fy2 = sorted((box[1] * h, box[3] * h))
    face = face_area((fx1, fy1, fx2, fy2), w, h)
    assert 0 <= face[0] < face[2] <= w and 0 <= face[1] < face[3] <= h
    assert face[2] - face[0] == face[3] - face[1]  # square
    panel = panel_area(face, w, h)
    assert 0 <= panel[0] < panel[2] <= w and 0 <= panel[1] < panel[3] <= h
    assert panel[0] <= face[0] and panel[1] <= face[1]  # contains the face
    assert panel[2] >= face[2] and panel[3] >= face[3]


KEYS = st.sampled_from(["seed", "data.batch_size", "data.image_size", "data.num_workers",
                        "optim.lr", "optim.name", "trainer.max_steps", "trainer.precision",
                        "trainer.devices", "trainer.accelerator", "model.arch", "byol.nope",
                        "data", "", ".", "a..b", "trainer.max_steps.x"])
VALUES = st.one_of(st.text(max_size=10), st.integers(-5, 5).map(str),
                   st.sampled_from(["[1,2", "{a: 1}", "null", "true", "1e400", "-0", "${x}"]))


@SETTINGS
@given(items=st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", KEYS, VALUES),
                                st.text(max_size=20)), max_size=4))
def test_overrides_give_a_config_or_one_user_error(items):
    try:
        cfg = load_config(BYOLConfig, "byol", None, items)
    except UserError as exc:
        assert "\n" not in str(exc).strip()
        return
    assert cfg.data.batch_size >= 1 and cfg.optim.lr >= 0


@SETTINGS
@given(text=st.one_of(
    st.text(max_size=200),
    st.builds(lambda k, v: f"{k}:\n  {v}\n",
              st.sampled_from(["data", "model", "optim", "trainer", "byol", "seed", "x"]),
              st.text(max_size=40)),
))
def test_yaml_config_text_gives_a_config_or_one_user_error(tmp_path_factory, text):
    path: Path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(BYOLConfig, "byol", str(path))
    except UserError:
        return
