"""Linear probe on frozen features: standardisation + multinomial logistic regression (lbfgs)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from backbone_ssl.evaluation.labels import require_identities, require_known_labels

log = logging.getLogger(__name__)


def _report_warnings(caught: list[warnings.WarningMessage], max_iter: int) -> None:
    """Log lbfgs non-convergence once (not a warning per fit); re-issue any other warning."""
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("linear probe: lbfgs did not converge in %d iterations", max_iter)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def linear_probe(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    test_feats: np.ndarray,
    test_labels: np.ndarray,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = 1000,
    class_names: Sequence[str] | None = None,
    source: str = "the training set",
) -> dict[str, float]:
    """Fit on ``train_feats`` ``[N, D]`` / ``train_labels`` ``[N]``; score ``test_feats``
    ``[M, D]``.

    Labels must share class indices (use :func:`align_by_name` for separate folders). Returns
    ``{"top1": float in [0, 1]}``. Raises UserError for fewer than 2 train classes
    (``class_names``/``source`` name them in the message) or unseen test classes.
    """
    train_labels = np.asarray(train_labels, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    require_identities(train_labels, class_names, source)
    require_known_labels(train_labels, test_labels)
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, random_state=seed),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(np.asarray(train_feats, dtype=np.float64), train_labels)
    _report_warnings(caught, max_iter)
    predicted = model.predict(np.asarray(test_feats, dtype=np.float64))
    return {"top1": float((predicted == test_labels).mean())}
