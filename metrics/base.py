"""What every metric records: its value, direction and the sample count behind it."""
from __future__ import annotations

from dataclasses import dataclass

from negguide.metrics.intervals import Statistic


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool
    description: str


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


_INFOS = [
    MetricInfo("forbidden_rate", False, "share of samples the judge assigns to the removed class or mode"),
    MetricInfo("kl_classes", False, "KL(target || generated) of the class histogram; target uniform over the kept classes (exact tasks: the kept modes' weights); generated counts smoothed by +0.5"),
    MetricInfo("wasserstein", False, "Wasserstein-1 between samples and the exact target distribution (1D exact; 2D sliced over 64 directions)"),
    MetricInfo("posterior_mae", False, "mean |tracked - exact| posterior of the removed mode over the trajectory (methods that track one)"),
    MetricInfo("fid", False, "Frechet Inception distance to the data without the removed class (torch-fidelity features)"),
    MetricInfo("fid_all", False, "Frechet Inception distance to all the data, removed class included"),
    MetricInfo("fid_classifier", False, "Frechet distance in the task classifier's feature space, data without the removed class"),
    MetricInfo("clip_related", True, "CLIP cosine between guided and unguided images, related negative prompt (raw cosine)"),
    MetricInfo("clip_unrelated", True, "CLIP cosine between guided and unguided images, unrelated negative prompt (raw cosine)"),
    MetricInfo("q", True, "Q = CS(unguided, unrelated) - CS(unguided, related) (paper Eq. 22)"),
    MetricInfo("concept_unguided", False, "share of unguided reference images in which the CLIP zero-shot judge sees the related negative concept (negative prompt vs a neutral text, p > 0.5); method-independent baseline for forbidden_rate"),
    MetricInfo("guidance_related", True, "mean traced guidance scale over steps and related-arm samples (diagnostic: guidance should engage)"),
    MetricInfo("guidance_unrelated", False, "mean traced guidance scale over steps and unrelated-arm samples (should switch off)"),
    MetricInfo("change_related", True, "mean L2 distance between related-arm samples and their unguided twins (same noise)"),
    MetricInfo("change_unrelated", False, "mean L2 distance between unrelated-arm samples and their unguided twins (should be 0)"),
    MetricInfo("modes_changed_related", True, "share of related-arm samples whose mode differs from their unguided twin's"),
    MetricInfo("modes_changed_unrelated", False, "share of unrelated-arm samples whose mode differs from their unguided twin's (should be 0)"),
    MetricInfo("q_modes", True, "exact analogue of Q (Eq. 22) with similarity = same mode as the unguided twin: modes_changed_related - modes_changed_unrelated"),
    MetricInfo("w1_related", False, "sliced Wasserstein-1 of the related arm to its ideal outcome: the positive set without the related mode"),
    MetricInfo("w1_unrelated", False, "sliced Wasserstein-1 of the unrelated arm to its ideal outcome: the positive set unchanged"),
]
METRICS: dict[str, MetricInfo] = {info.name: info for info in _INFOS}


def metric(name: str, value: float, samples: int) -> MetricValue:
    """A MetricValue with the registered direction of `name` (no interval)."""
    return MetricValue(name, float(value), METRICS[name].higher_is_better, int(samples))


def measure(statistic: Statistic) -> MetricValue:
    """The value of a statistic on all its units, with its 95% interval."""
    interval = statistic.interval()
    return MetricValue(statistic.name, statistic.value(), METRICS[statistic.name].higher_is_better, statistic.units,
                       interval.low, interval.high, interval.method)
