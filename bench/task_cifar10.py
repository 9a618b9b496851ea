"""CIFAR-10 class removal, cifar10-remove-0 .. cifar10-remove-4 (paper §4.1, Fig. 4, Appendix D.2).

Two networks: google/ddpm-cifar10-32 (unconditional) and a copy fine-tuned on the removed class only;
the aaraki ViT judges. Nothing of this ships with the project: see docs/cifar10.md for how to provide it.
Profiles: `ci` (a smoke test of the whole path: no Inception FID, so no reference features), `quick`
(256 samples, 100 steps; FID on 256 samples is biased, its sample count is stored beside it) and `paper`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from bench.errors import BenchError
from bench.schedule import Step
from bench.tasks import Profile, Task, register
from datasets import cifar10
from metrics.base import MetricValue, metric
from metrics.classes import forbidden_rate, kl_classes

VERSION = "1"
N_CLASSES = len(cifar10.CLASSES)
REMOVABLE = range(5)  # airplane .. deer: the paper's Fig. 4 removes several of these
METRICS = ("forbidden_rate", "kl_classes", "fid", "fid_all")
FID_METRICS = ("fid", "fid_all")
PROFILES = {
    "ci": Profile(samples=8, steps=3, batch_size=8, metrics=("forbidden_rate", "kl_classes")),
    "quick": Profile(samples=256, steps=100, batch_size=128),
    "paper": Profile(samples=10_240, steps=1000, batch_size=512),
}
DNG_PAPER_PARAMS = {"prior": 0.01, "tau": 0.2, "delta": 2e-4, "p_max": 0.8}  # Table 1; p_max from the reference README
PAPER_SCALES = {"dng": 5.0, "np": 0.5, "sld": 0.5}  # Appendix D.2: "around 5" and "around 0.5"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def preflight(removed: int, metrics: tuple[str, ...] = METRICS) -> None:
    """Every model file and, for FID, the data are at hand: configs are read, weights are not loaded."""
    checks = {"unconditional DDPM": lambda: cifar10.check_unet(cifar10.ddpm_source()),
              f"to-forget DDPM for class {removed}": lambda: cifar10.check_unet(cifar10.forget_source(removed)),
              "classifier": lambda: cifar10.check_classifier(cifar10.classifier_source())}
    if set(metrics) & set(FID_METRICS):
        checks["CIFAR-10 data"] = cifar10.check_data
    problems = {}
    for label, check in checks.items():
        try:
            check()
        except BenchError as exc:
            problems[label] = str(exc)
    if problems:
        first, *others = problems
        raise BenchError(problems[first] + (f" (also missing: {', '.join(others)})" if others else ""))


class OnDevice:
    """Runs a denoiser's networks on `device` while the sampler's tensors stay where they are."""

    def __init__(self, inner, device: torch.device):
        self.inner, self.device = inner, device

    def __call__(self, x: torch.Tensor, step: Step, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        predictions = self.inner(x.to(self.device), step, names)
        return {name: eps.to(x.device) for name, eps in predictions.items()}


class Cifar10Runtime:
    """The two DDPMs as one denoiser (uncond, neg) and the ViT as judge."""

    dtype = torch.float32

    def __init__(self, removed: int):
        from datasets.bundles import TwoNetworkBundle

        device = default_device()
        uncond = cifar10.load_unet(cifar10.ddpm_source()).to(device)
        forget = cifar10.load_unet(cifar10.forget_source(removed)).to(device)
        self.removed = removed
        self.denoiser = OnDevice(TwoNetworkBundle(uncond, forget), device)
        self.judge = cifar10.load_classifier(cifar10.classifier_source(), device)
        self._labelled: tuple[str, np.ndarray] | None = None

    def exact_trace(self, x: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        return {}

    def class_labels(self, x: torch.Tensor) -> np.ndarray:
        """The judge's classes of the saved (uint8) images; the last answer is reused (evaluate, then the runner)."""
        images = self.to_artifact(x)
        digest = hashlib.sha256(images.tobytes()).hexdigest()
        if self._labelled is None or self._labelled[0] != digest:
            self._labelled = (digest, self.judge.labels(images))
        return self._labelled[1]

    def evaluate(self, x: torch.Tensor, traces: dict[str, np.ndarray], wanted: tuple[str, ...]) -> list[MetricValue]:
        n = len(x)
        labels = self.class_labels(x)
        values = [metric("forbidden_rate", forbidden_rate(labels, self.removed), n),
                  metric("kl_classes", kl_classes(labels, self.removed, N_CLASSES), n)]
        if set(wanted) & set(FID_METRICS):
            from metrics.fid import inception_fid

            real, real_labels = cifar10.load_cifar10_train(cifar10.data_root())
            generated = self.to_artifact(x)
            if "fid" in wanted:
                values.append(metric("fid", inception_fid(generated, real[real_labels != self.removed]), n))
            if "fid_all" in wanted:
                values.append(metric("fid_all", inception_fid(generated, real), n))
        return [v for v in values if v.name in wanted]

    def to_artifact(self, x: torch.Tensor) -> np.ndarray:
        """[-1, 1] float N x 3 x 32 x 32 -> uint8 (what the judge and FID see)."""
        from datasets.mnist import to_uint8

        return to_uint8(x)


def _fingerprint(source: cifar10.ModelSource) -> tuple:
    """A local folder's files with their modification times (a Hub id stands for itself)."""
    folder = Path(source.location)
    files = sorted(f for f in folder.rglob("*") if f.is_file()) if source.local and folder.is_dir() else []
    return (source.location, *((str(f.relative_to(folder)), f.stat().st_mtime_ns) for f in files))


def _resources(removed: int) -> tuple:
    return tuple(_fingerprint(s) for s in (cifar10.ddpm_source(), cifar10.forget_source(removed), cifar10.classifier_source()))


def _details(removed: int) -> dict:
    return {"n_classes": N_CLASSES, "classes": list(cifar10.CLASSES), "removed_class": cifar10.CLASSES[removed],
            "ddpm": cifar10.ddpm_source().where(), "forget": cifar10.forget_source(removed).where(),
            "classifier": cifar10.classifier_source().where(), "data_root": str(cifar10.data_root()),
            "dng_paper_params": dict(DNG_PAPER_PARAMS), "paper_scales": dict(PAPER_SCALES), "setup": "docs/cifar10.md"}


def _cifar10_task(removed: int) -> Task:
    name = cifar10.CLASSES[removed]
    return Task(
        name=f"cifar10-remove-{removed}",
        version=VERSION,
        family="cifar10",
        description=f"CIFAR-10: remove class {removed} ({name}) from {cifar10.DDPM_ID} with a to-forget DDPM fine-tuned on {name}s; ViT judge (needs downloaded weights)",
        shape=(3, 32, 32),
        removed=removed,
        metrics=METRICS,
        profiles=PROFILES,
        load=lambda: Cifar10Runtime(removed),
        details=lambda: _details(removed),
        resources=lambda: _resources(removed),
        preflight=lambda metrics: preflight(removed, metrics),
    )


for _k in REMOVABLE:
    register(_cifar10_task(_k))
