"""Class bookkeeping shared by the kNN and linear evaluations.

Train and test folders are separate trees, so their class indices only mean something through the
folder names: test labels are mapped onto the train classes by name, never by position.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backbone_ssl.errors import UserError


def _preview(names: Sequence[str], limit: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, ... (12 in all)``."""
    shown = ", ".join(str(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def require_identities(
    labels: np.ndarray | Sequence[int],
    class_names: Sequence[str] | None = None,
    source: str = "the training set",
) -> None:
    """Raise UserError unless ``labels`` ``[N]`` hold at least 2 distinct classes."""
    present = sorted({int(y) for y in np.asarray(labels).reshape(-1)})
    if len(present) >= 2:
        return
    names = [class_names[i] if class_names is not None else str(i) for i in present]
    raise UserError(
        f"eval needs at least 2 identities in {source}, found {len(present)}: "
        f"{_preview(names) or 'none'} (use one sub-folder per identity: ROOT/<identity>/<image>)"
    )


def align_by_name(
    train_classes: Sequence[str],
    test_classes: Sequence[str],
    test_labels: np.ndarray | Sequence[int],
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Re-express test labels as indices into ``train_classes`` by folder name.

    Returns ``(labels [M] int64, keep [M] int64 row indices into the test set, unknown names)``:
    test rows whose identity is not a train class are dropped and their names listed.
    """
    position = {name: i for i, name in enumerate(train_classes)}
    test_labels = np.asarray(test_labels, dtype=np.int64)
    mapped = np.array([position.get(name, -1) for name in test_classes], dtype=np.int64)
    per_row = mapped[test_labels] if len(test_labels) else np.zeros(0, dtype=np.int64)
    keep = np.flatnonzero(per_row >= 0)
    unknown = sorted({test_classes[y] for y in test_labels[per_row < 0]})
    return per_row[keep], keep, unknown


def require_known_labels(train_labels: np.ndarray, test_labels: np.ndarray) -> None:
    """Raise UserError when ``test_labels`` contain a class absent from ``train_labels``."""
    missing = sorted(set(np.unique(test_labels).tolist()) - set(np.unique(train_labels).tolist()))
    if missing:
        raise UserError(
            f"test labels {_preview([str(m) for m in missing])} never occur in the training "
            "labels; map test classes onto train classes by name first (align_by_name)"
        )


def no_test_left_message(test_source: str, train_source: str, unknown: Sequence[str]) -> str:
    """The UserError text when no test identity occurs in the train folder."""
    return (
        f"no identity in {test_source} occurs in {train_source} (test identities: "
        f"{_preview(list(unknown))}); the test folders must be named like the train folders"
    )
