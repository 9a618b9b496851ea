"""95% intervals for every metric, and paired differences between two runs on the same noise.

A metric is a `Statistic`: a function of the units it is computed on (samples, or the triples of a
paired text-to-image run), given as an index array, so that one bootstrap serves every metric and a
paired comparison resamples the same units in both runs. Shares get Wilson score intervals
(scipy.stats.binomtest); everything else a percentile bootstrap over units (scipy.stats.bootstrap)
with a fixed seed, so an interval is reproducible from the stored per-sample records.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
SEED = 0  # bootstrap resampling seed: the same records always give the same interval
RESAMPLES = 1000
RESAMPLES_COSTLY = 200  # Frechet distances and Wasserstein: each resample recomputes the whole metric


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str  # how it was made, e.g. "wilson", "bootstrap-percentile-1000"

    def overlaps(self, other: "Interval") -> bool:
        return self.low <= other.high and other.low <= self.high


@dataclass(frozen=True)
class Statistic:
    """A metric as a function of the units it is computed on: `of(index) -> value`.

    `hits` (a boolean per unit) marks a share: its interval is Wilson's, and its value the mean of hits.
    """

    name: str
    units: int
    of: Callable[[np.ndarray], float]
    hits: np.ndarray | None = None
    resamples: int = RESAMPLES

    @classmethod
    def share(cls, name: str, hits: np.ndarray) -> "Statistic":
        hits = np.asarray(hits, dtype=bool)
        return cls(name, len(hits), lambda index: float(hits[index].mean()) if len(index) else float("nan"), hits=hits)

    @classmethod
    def mean(cls, name: str, values: np.ndarray) -> "Statistic":
        values = np.asarray(values, dtype=np.float64)
        return cls(name, len(values), lambda index: float(values[index].mean()) if len(index) else float("nan"))

    def value(self) -> float:
        return float(self.of(np.arange(self.units)))

    def interval(self) -> Interval:
        if self.units == 0:
            return Interval(float("nan"), float("nan"), "none")
        if self.hits is not None:
            return wilson(int(self.hits.sum()), self.units)
        if self.units < 2:  # one unit cannot be resampled
            return Interval(float("nan"), float("nan"), "none")
        return bootstrap(self.of, self.units, self.resamples)


def with_interval(value: float | None, low: float | None = None, high: float | None = None) -> str:
    """A value and its 95% interval as text, `0.0123 [0.0101, 0.015]`; the value alone without an interval, "" without a value."""
    if value is None or value != value:
        return ""
    if low is None or high is None or low != low or high != high:
        return f"{value:.4g}"
    return f"{value:.4g} [{low:.4g}, {high:.4g}]"


def wilson(successes: int, trials: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a share (scipy.stats.binomtest)."""
    ci = stats.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(float(ci.low), float(ci.high), "wilson")


def bootstrap(statistic: Callable[[np.ndarray], float], units: int, resamples: int = RESAMPLES,
              confidence: float = CONFIDENCE) -> Interval:
    """Percentile bootstrap over units (scipy.stats.bootstrap), resampling unit indices with a fixed seed."""
    index = np.arange(units)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant statistic (e.g. no change at all) is a valid, degenerate answer
        result = stats.bootstrap((index,), lambda i: statistic(np.asarray(i, dtype=np.int64)), n_resamples=resamples,
                                 confidence_level=confidence, method="percentile", vectorized=False, rng=np.random.default_rng(SEED))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return Interval(low, high, f"bootstrap-percentile-{resamples}")


def paired_difference(a: Statistic, b: Statistic, resamples: int | None = None) -> tuple[float, Interval]:
    """b - a and its paired-bootstrap interval: the same units resampled in both runs (they share noise)."""
    if a.units != b.units:
        raise ValueError(f"{a.name}: the runs have {a.units} and {b.units} units; a paired comparison needs the same samples")
    difference = b.value() - a.value()
    if a.units < 2:
        return difference, Interval(float("nan"), float("nan"), "none")
    interval = bootstrap(lambda index: b.of(index) - a.of(index), a.units, resamples or min(a.resamples, b.resamples))
    return difference, Interval(interval.low, interval.high, "paired-" + interval.method)
