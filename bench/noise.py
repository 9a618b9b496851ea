"""Counter-based Gaussian noise: the value for (seed, sample, step, element) is fixed.

Sample i's initial noise and per-step noise depend only on (run seed, i), never on the batch
size or on which worker draws them (the NVlabs/edm habit, without one generator per sample).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import ndtri

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
INITIAL = -1  # the "step" index of the initial noise x_T


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele et al. 2014): a bijective avalanche hash of uint64."""
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def _key(seed: int, sample: np.ndarray, step: int) -> np.ndarray:
    """One 64-bit key per sample, chaining the hash over (seed, step, sample)."""
    base = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    base = _splitmix64(base ^ np.uint64((step + 1) & 0xFFFFFFFFFFFFFFFF))
    with np.errstate(over="ignore"):
        return _splitmix64(base ^ sample.astype(np.uint64))


def gaussian(seed: int, samples: np.ndarray, step: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise of shape [len(samples), *shape] for the given sample indices."""
    size = int(np.prod(shape, dtype=np.int64))
    keys = _key(seed, np.asarray(samples, dtype=np.int64), step)[:, None]
    with np.errstate(over="ignore"):
        bits = _splitmix64(keys ^ (np.arange(size, dtype=np.uint64)[None, :] * np.uint64(0xD1B54A32D192ED03)))
    # 53 random bits -> uniform in (0, 1) -> normal via the inverse CDF.
    uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)
    return torch.from_numpy(ndtri(uniform).reshape(len(samples), *shape))
