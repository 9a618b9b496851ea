"""The metric registry (each metric once: direction, description, computation) and what every metric records:
its value, direction and the sample count behind it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from negguide.metrics.classes import kl_classes
from negguide.metrics.distances import GaussianMixture, wasserstein_to_mixture
from negguide.metrics.frechet import frechet_statistic
from negguide.metrics.intervals import DISTANCE, EITHER, Statistic


@dataclass(frozen=True)
class MetricInfo:
    """A metric, registered once: its direction, what it means, and how it is computed from a task's records."""

    name: str
    higher_is_better: bool
    description: str
    compute: Callable[..., Statistic]  # (name, **records) -> Statistic over the records' units

    def of(self, **records) -> Statistic:
        """This metric over the units of `records` (the keyword arguments its computation names)."""
        return self.compute(self.name, **records)

    @property
    def computation(self) -> str:
        """The computation's first docstring line, for `bench list metrics`."""
        return (self.compute.__doc__ or self.compute.__name__).strip().splitlines()[0]


@dataclass(frozen=True)
class MetricValue:
    name: str
    value: float
    higher_is_better: bool
    samples: int
    low: float = float("nan")  # 95% interval, and how it was made (metrics/intervals.py)
    high: float = float("nan")
    interval: str = "none"

    def as_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "higher_is_better": self.higher_is_better, "samples": self.samples,
                "low": self.low, "high": self.high, "interval": self.interval}


def difference_of_means(name: str, first: np.ndarray, second: np.ndarray) -> Statistic:
    """mean(first) - mean(second) over the same units (percentile bootstrap)."""
    first, second = np.asarray(first), np.asarray(second)  # their own dtype: a float32 score's mean stays float32, as before
    return Statistic(name, len(first), lambda i: float(np.mean(first[i]) - np.mean(second[i])))


def class_kl(name: str, labels: np.ndarray, removed: int | None, classes: int, weights: np.ndarray | None = None) -> Statistic:
    """KL(target || generated) of the labels' histogram over the kept classes, smoothed by +0.5 (basic bootstrap widened to
    its estimate: a plug-in divergence, biased upward like the distances; metrics/intervals.py)."""
    return Statistic(name, len(labels), lambda i: kl_classes(labels[i], removed, classes, weights), method=DISTANCE)


def wasserstein(name: str, points: np.ndarray, target: GaussianMixture) -> Statistic:
    """Wasserstein-1 (sliced in 2D) of the points to an exact mixture (union of percentile and basic bootstrap)."""
    return Statistic.distance(name, len(points), lambda i: wasserstein_to_mixture(points[i], target), EITHER)


def posterior_error(name: str, tracked: np.ndarray, exact: np.ndarray) -> Statistic:
    """mean |tracked - exact| posterior over steps (rows) and samples (columns, the units; percentile bootstrap)."""
    return Statistic(name, tracked.shape[1], lambda i: float(np.mean(np.abs(tracked[:, i] - exact[:, i]))))


def trace_mean(name: str, trace: np.ndarray, units: np.ndarray) -> Statistic:
    """mean of a per-step trace over steps and the samples `units` names (percentile bootstrap over units)."""
    return Statistic(name, len(units), lambda i: float(trace[:, units[i]].mean()))


_INFOS = [
    MetricInfo("forbidden_rate", False, "share of samples the judge assigns to the removed class or mode", Statistic.share),
    MetricInfo("kl_classes", False, "KL(target || generated) of the class histogram; target uniform over the kept classes (exact tasks: the kept modes' weights); generated counts smoothed by +0.5", class_kl),
    MetricInfo("wasserstein", False, "Wasserstein-1 between samples and the exact target distribution (1D exact; 2D sliced over 64 directions)", wasserstein),
    MetricInfo("posterior_mae", False, "mean |tracked - exact| posterior of the removed mode over the trajectory (methods that track one)", posterior_error),
    MetricInfo("fid", False, "Frechet Inception distance to the data without the removed class (torch-fidelity features)", frechet_statistic),
    MetricInfo("fid_all", False, "Frechet Inception distance to all the data, removed class included", frechet_statistic),
    MetricInfo("fid_classifier", False, "Frechet distance in the task classifier's feature space, data without the removed class", frechet_statistic),
    MetricInfo("clip_related", True, "CLIP cosine between guided and unguided images, related negative prompt (raw cosine)", Statistic.mean),
    MetricInfo("clip_unrelated", True, "CLIP cosine between guided and unguided images, unrelated negative prompt (raw cosine)", Statistic.mean),
    MetricInfo("q", True, "Q = CS(unguided, unrelated) - CS(unguided, related) (paper Eq. 22)", difference_of_means),
    MetricInfo("concept_unguided", False, "share of unguided reference images in which the CLIP zero-shot judge sees the related negative concept (negative prompt vs a neutral text, p > 0.5); method-independent baseline for forbidden_rate", Statistic.share),
    MetricInfo("guidance_related", True, "mean traced guidance scale over steps and related-arm samples (diagnostic: guidance should engage)", trace_mean),
    MetricInfo("guidance_unrelated", False, "mean traced guidance scale over steps and unrelated-arm samples (should switch off)", trace_mean),
    MetricInfo("change_related", True, "mean L2 distance between related-arm samples and their unguided twins (same noise)", Statistic.mean),
    MetricInfo("change_unrelated", False, "mean L2 distance between unrelated-arm samples and their unguided twins (should be 0)", Statistic.mean),
    MetricInfo("modes_changed_related", True, "share of related-arm samples whose mode differs from their unguided twin's", Statistic.share),
    MetricInfo("modes_changed_unrelated", False, "share of unrelated-arm samples whose mode differs from their unguided twin's (should be 0)", Statistic.share),
    MetricInfo("q_modes", True, "exact analogue of Q (Eq. 22) with similarity = same mode as the unguided twin: modes_changed_related - modes_changed_unrelated", difference_of_means),
    MetricInfo("w1_related", False, "sliced Wasserstein-1 of the related arm to its ideal outcome: the positive set without the related mode", wasserstein),
    MetricInfo("w1_unrelated", False, "sliced Wasserstein-1 of the unrelated arm to its ideal outcome: the positive set unchanged", wasserstein),
]
METRICS: dict[str, MetricInfo] = {info.name: info for info in _INFOS}


def statistic(name: str, **records) -> Statistic:
    """The registered metric `name` computed over `records` (its computation's keyword arguments)."""
    return METRICS[name].of(**records)


def metric(name: str, value: float, samples: int) -> MetricValue:
    """A MetricValue with the registered direction of `name` (no interval)."""
    return MetricValue(name, float(value), METRICS[name].higher_is_better, int(samples))


def measure(statistic: Statistic) -> MetricValue:
    """The value of a statistic on all its units, with its 95% interval."""
    interval = statistic.interval()
    return MetricValue(statistic.name, statistic.value(), METRICS[statistic.name].higher_is_better, statistic.units,
                       interval.low, interval.high, interval.method)
