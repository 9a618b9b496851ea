"""Distances between samples and an exact target distribution (Gaussian-mixture tasks)."""
from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import numpy as np


class GaussianMixture(Protocol):
    """What the distances need of an exact mixture (datasets.gmm.GaussianMixture has it)."""

    means: tuple[tuple[float, ...], ...]
    stds: tuple[float, ...]

    def projected_cdf(self, points: np.ndarray, direction: np.ndarray) -> np.ndarray: ...

SLICES = 64
GRID = 4001


def _w1_projected(points: np.ndarray, target: GaussianMixture, direction: np.ndarray) -> float:
    """W1 = integral |F_n - F| on a fine grid covering samples and target (1D, exact CDF)."""
    centres = np.asarray(target.means) @ direction
    spread = 6 * max(target.stds)
    low = min(points.min(), centres.min() - spread)
    high = max(points.max(), centres.max() + spread)
    grid = np.linspace(low, high, GRID)
    empirical = np.searchsorted(np.sort(points), grid, side="right") / len(points)
    return float(np.trapezoid(np.abs(empirical - _target_cdf(target, float(low), float(high), tuple(direction))), grid))


@lru_cache(maxsize=1024)
def _target_cdf(target: GaussianMixture, low: float, high: float, direction: tuple[float, ...]) -> np.ndarray:
    """The target's projected CDF on the grid from `low` to `high`: the same grid for nearly every bootstrap resample
    (its ends are usually the target's, not the samples'), so computed once (a run's intervals spent 90% of their time here)."""
    return target.projected_cdf(np.linspace(low, high, GRID), np.asarray(direction))


def wasserstein_to_mixture(samples: np.ndarray, target: GaussianMixture) -> float:
    """W1 in 1D; in more dimensions, sliced W1 averaged over evenly spread directions."""
    samples = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)
    if samples.shape[1] == 1:
        return _w1_projected(samples[:, 0], target, np.array([1.0]))
    if samples.shape[1] != 2:
        raise ValueError("sliced Wasserstein is implemented for 1D and 2D mixtures")
    angles = np.pi * np.arange(SLICES) / SLICES
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return float(np.mean([_w1_projected(samples @ d, target, d) for d in directions]))
