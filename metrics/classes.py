"""Safety and class balance from class labels (paper §4.1)."""
from __future__ import annotations

import numpy as np

SMOOTHING = 0.5  # pseudo-count added to every kept class, so an empty class gives a finite KL


def class_histogram(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)[:n_classes]


def forbidden_rate(labels: np.ndarray, removed: int) -> float:
    """Share of samples labelled as the removed class."""
    return float(np.mean(np.asarray(labels) == removed))


def kl_classes(labels: np.ndarray, removed: int | None, n_classes: int, target: np.ndarray | None = None) -> float:
    """KL(target || generated) over the kept classes (every class when `removed` is None).

    `target` defaults to uniform over the kept classes. Generated probabilities are
    (n_c + 0.5) / (N + 0.5 * K) with N counting every sample, forbidden ones included, so mass
    lost to the removed class raises the KL and a kept class with no sample stays finite.
    """
    counts = class_histogram(labels, n_classes).astype(np.float64)
    kept = np.array([c for c in range(n_classes) if c != removed])
    if target is None:
        target = np.full(len(kept), 1.0 / len(kept))
    generated = (counts[kept] + SMOOTHING) / (counts.sum() + SMOOTHING * n_classes)
    return float(np.sum(target * (np.log(target) - np.log(generated))))
