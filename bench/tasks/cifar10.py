"""CIFAR-10 class removal, cifar10-remove-0 .. cifar10-remove-4 (paper §4.1, Fig. 4, Appendix D.2).

Two networks: google/ddpm-cifar10-32 (unconditional) and a copy fine-tuned on the removed class only;
the aaraki ViT judges. Nothing of this ships with the project: see docs/cifar10.md for how to provide it.
Protocols: `ci` (a smoke test of the whole path: no Inception FID, so no reference features), `quick`
(256 samples, 100 steps; FID on 256 samples is biased, its sample count is stored beside it) and `paper`.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from negguide.bench.tasks.digests import folder_digest, json_digest
from negguide.bench.tasks.spec import PAPER_SAMPLER, Conditioning, Records, RunProtocol, Task, Traces, class_removal
from negguide.datasets import cifar10
from negguide.methods.errors import BenchError
from negguide.metrics.base import statistic
from negguide.metrics.intervals import Statistic

VERSION = "1"
N_CLASSES = len(cifar10.CLASSES)
REMOVABLE = range(5)  # airplane .. deer: the paper's Fig. 4 removes several of these
METRICS = ("forbidden_rate", "kl_classes", "fid", "fid_all")
FID_METRICS = ("fid", "fid_all")
PROTOCOLS = {
    "ci": RunProtocol(samples=8, steps=3, batch_size=8, metrics=("forbidden_rate", "kl_classes")),
    "quick": RunProtocol(samples=256, steps=100, batch_size=128),
    "standard": RunProtocol(samples=2048, steps=100, batch_size=256),
    "paper": RunProtocol(samples=10_240, steps=1000, batch_size=512, sampler=PAPER_SAMPLER),
}
DNG_PAPER_PARAMS = {"prior": 0.01, "tau": 0.2, "delta": 2e-4, "p_max": 0.8}  # Table 1; p_max from the reference README
PAPER_SCALES = {"dng": 5.0, "np": 0.5, "sld": 0.5}  # Appendix D.2: "around 5" and "around 0.5"


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


class Cifar10Runtime:
    """The two DDPMs as one denoiser (uncond, neg) and the ViT as judge, on one device."""

    dtype = torch.float32

    def __init__(self, removed: int, device: torch.device):
        from negguide.datasets.bundles import TwoNetworkBundle

        uncond = cifar10.load_unet(cifar10.ddpm_source()).to(device)
        forget = cifar10.load_unet(cifar10.forget_source(removed)).to(device)
        self.removed, self.device = removed, device
        self.denoiser = TwoNetworkBundle(uncond, forget)
        self.judge_model = cifar10.load_classifier(cifar10.classifier_source(), device)

    def condition(self, ids: np.ndarray) -> Conditioning:
        return Conditioning(self.denoiser, np.asarray(ids, dtype=np.int64))

    def records(self, x: torch.Tensor, wanted: tuple[str, ...]) -> Records:
        """The judge's label and confidence of each saved (uint8) image, and Inception features when FID is wanted."""
        generated = self.to_artifact(x)
        probabilities = self.judge_model.probabilities(generated)
        found = {"label": probabilities.argmax(1).astype(np.int64), "confidence": probabilities.max(1)}
        if set(wanted) & set(FID_METRICS):
            from negguide.metrics.fid import inception_features

            found["inception"] = inception_features(generated)
        return found

    def statistics(self, records: Records, traces: Traces, wanted: tuple[str, ...]) -> list[Statistic]:
        labels = records["label"]
        found = [statistic("forbidden_rate", hits=labels == self.removed),
                 statistic("kl_classes", labels=labels, removed=self.removed, classes=N_CLASSES)]
        if "inception" in records:
            from negguide.metrics.fid import reference_stats

            real, real_labels = cifar10.load_cifar10_train(cifar10.data_root())
            references = {"fid": real[real_labels != self.removed], "fid_all": real}
            found += [statistic(name, features=records["inception"], reference=reference_stats(images))
                      for name, images in references.items() if name in wanted]
        return found

    def to_artifact(self, x: torch.Tensor) -> np.ndarray:
        """[-1, 1] float N x 3 x 32 x 32 -> uint8 (what the judge and FID see)."""
        from negguide.datasets.mnist import to_uint8

        return to_uint8(x.cpu())


def _fingerprint(source: cifar10.ModelSource) -> tuple:
    """A local folder's files with their modification times (a Hub id stands for itself)."""
    folder = Path(source.location)
    files = sorted(f for f in folder.rglob("*") if f.is_file()) if source.local and folder.is_dir() else []
    return (source.location, *((str(f.relative_to(folder)), f.stat().st_mtime_ns) for f in files))


def _resources(removed: int) -> tuple:
    return tuple(_fingerprint(s) for s in (cifar10.ddpm_source(), cifar10.forget_source(removed), cifar10.classifier_source()))


def _digests(removed: int) -> dict:
    """The judge's files (or its Hub id) and the CIFAR-10 training files the FID reference comes from."""
    judge = cifar10.classifier_source()
    data = Path(cifar10.data_root()) / cifar10.CIFAR_FOLDER
    return {"judge": folder_digest(Path(judge.location)) if judge.local else json_digest(judge.location),
            "reference": f"{folder_digest(data, 'data_batch_*')}-without-{removed}"}


def _details(removed: int) -> dict:
    return {"n_classes": N_CLASSES, "classes": list(cifar10.CLASSES), "removed_class": cifar10.CLASSES[removed],
            "ddpm": cifar10.ddpm_source().where(), "forget": cifar10.forget_source(removed).where(),
            "classifier": cifar10.classifier_source().where(), "data_root": str(cifar10.data_root()),
            "dng_paper_params": dict(DNG_PAPER_PARAMS), "paper_scales": dict(PAPER_SCALES), "setup": "docs/cifar10.md"}


def _cifar10_task(removed: int) -> Task:
    name = cifar10.CLASSES[removed]
    description = (f"CIFAR-10: remove class {removed} ({name}) from {cifar10.DDPM_ID} with a to-forget DDPM fine-tuned on {name}s; "
                   "ViT judge (needs downloaded weights)")
    return class_removal("cifar10", removed, Cifar10Runtime, version=VERSION, description=description, shape=(3, 32, 32), n_classes=N_CLASSES,
                         metrics=METRICS, protocols=PROTOCOLS, digests=partial(_digests, removed), details=partial(_details, removed), resources=partial(_resources, removed),
                         preflight=partial(preflight, removed))


def tasks(options: object = None) -> Iterable[Task]:
    return [_cifar10_task(k) for k in REMOVABLE]
