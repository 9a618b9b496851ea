"""Exact Gaussian-mixture removal tasks: gmm1d-remove-K and gmm2d-remove-K (paper Fig. 1, 3)."""
from __future__ import annotations

from functools import partial
from typing import Iterable

import numpy as np
import torch

from negguide.bench.tasks.spec import Conditioning, Judgement, Profile, Task, class_removal
from negguide.datasets.gmm import (
    GMM1D,
    GMM2D,
    ExactDenoiser,
    GaussianMixture,
    RemovalProblem,
)
from negguide.metrics.base import metric
from negguide.metrics.classes import forbidden_rate, kl_classes
from negguide.metrics.distances import wasserstein_to_mixture

VERSION = "1"
PROFILES = {"quick": Profile(samples=4096, steps=1000, batch_size=4096), "paper": Profile(samples=100_000, steps=1000, batch_size=10_000)}


class GMMRuntime:
    """Closed-form denoiser and exact judge of one removal problem."""

    dtype = torch.float64

    def __init__(self, problem: RemovalProblem, device: torch.device):
        self.problem, self.device = problem, device
        self.denoiser = ExactDenoiser(problem)

    def condition(self, ids: np.ndarray) -> Conditioning:
        return Conditioning(self.denoiser, np.asarray(ids, dtype=np.int64), exact_trace=self.denoiser.exact_posterior)

    def judge(self, x: torch.Tensor, traces: dict[str, np.ndarray], wanted: tuple[str, ...]) -> Judgement:
        n = len(x)
        modes = self.problem.mixture.assign(x).cpu().numpy()
        removed = self.problem.removed
        kept_weights = np.asarray(self.problem.remember.weights)
        values = [
            metric("forbidden_rate", forbidden_rate(modes, removed), n),
            metric("kl_classes", kl_classes(modes, removed, len(self.problem.mixture.weights), kept_weights), n),
            metric("wasserstein", wasserstein_to_mixture(x.cpu().numpy(), self.problem.remember), n),
        ]
        if "posterior" in traces and "posterior_exact" in traces:
            values.append(metric("posterior_mae", float(np.mean(np.abs(traces["posterior"] - traces["posterior_exact"]))), n))
        return Judgement([v for v in values if v.name in wanted], {"label": modes.astype(np.int64)})

    def to_artifact(self, x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy()


def _details(mixture: GaussianMixture) -> dict:
    return mixture.as_dict()


def _gmm_task(prefix: str, mixture: GaussianMixture, removed: int, description: str) -> Task:
    return class_removal(
        prefix, removed, partial(_runtime, mixture),
        version=VERSION,
        description=f"{description}; remove mode {removed}",
        shape=(mixture.dim,),
        n_classes=len(mixture.weights),
        metrics=("forbidden_rate", "kl_classes", "wasserstein", "posterior_mae"),
        profiles=PROFILES,
        details=partial(_details, mixture),
        quality_metric="wasserstein",
        predictions=("uncond", "neg", "remember", "posterior_logit"),
        intra_op_threads=1,  # tiny tensors: extra threads only add contention (20x slower measured)
        default_device="cpu",
    )


def _runtime(mixture: GaussianMixture, removed: int, device: torch.device) -> GMMRuntime:
    return GMMRuntime(RemovalProblem(mixture, removed), device)


def tasks(options: object = None) -> Iterable[Task]:
    for k in range(len(GMM1D.weights)):
        yield _gmm_task("gmm1d", GMM1D, k, "1D mixture of 3 equal Gaussians at -3, 0, 3 (std 0.5)")
    for k in range(len(GMM2D.weights)):
        yield _gmm_task("gmm2d", GMM2D, k, "2D mixture of 5 equal Gaussians: centre and the corners of a square (std 0.5)")
