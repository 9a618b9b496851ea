"""Exact Gaussian-mixture removal tasks: gmm1d-remove-K and gmm2d-remove-K (paper Fig. 1, 3)."""
from __future__ import annotations

from functools import partial
from typing import Iterable

import numpy as np
import torch

from negguide.bench.tasks.digests import json_digest
from negguide.bench.tasks.spec import PAPER_SAMPLER, Conditioning, Records, RunProtocol, Task, Traces, class_removal
from negguide.datasets.gmm import (
    GMM1D,
    GMM2D,
    ExactDenoiser,
    GaussianMixture,
    RemovalProblem,
)
from negguide.metrics.base import statistic
from negguide.metrics.intervals import Statistic

VERSION = "1"
PROTOCOLS = {
    "quick": RunProtocol(samples=4096, steps=1000, batch_size=4096),
    "standard": RunProtocol(samples=16_384, steps=1000, batch_size=4096),
    "paper": RunProtocol(samples=100_000, steps=1000, batch_size=10_000, sampler=PAPER_SAMPLER),
}


class GMMRuntime:
    """Closed-form denoiser and exact judge of one removal problem."""

    dtype = torch.float64

    def __init__(self, problem: RemovalProblem, device: torch.device):
        self.problem, self.device = problem, device
        self.denoiser = ExactDenoiser(problem)

    def condition(self, ids: np.ndarray) -> Conditioning:
        return Conditioning(self.denoiser, np.asarray(ids, dtype=np.int64), exact_trace=self.denoiser.exact_posterior)

    def records(self, x: torch.Tensor, wanted: tuple[str, ...]) -> Records:
        """Each sample's mode (the exact judge) and the sample itself (for distances)."""
        return {"label": self.problem.mixture.assign(x).cpu().numpy().astype(np.int64), "x": x.cpu().numpy().reshape(len(x), -1)}

    def statistics(self, records: Records, traces: Traces, wanted: tuple[str, ...]) -> list[Statistic]:
        modes, points = records["label"], records["x"]
        removed, n_modes = self.problem.removed, len(self.problem.mixture.weights)
        kept_weights = np.asarray(self.problem.remember.weights)
        found = [
            statistic("forbidden_rate", hits=modes == removed),
            statistic("kl_classes", labels=modes, removed=removed, classes=n_modes, weights=kept_weights),
            statistic("wasserstein", points=points, target=self.problem.remember),
        ]
        if "posterior" in traces and "posterior_exact" in traces:
            found.append(statistic("posterior_mae", tracked=traces["posterior"], exact=traces["posterior_exact"]))
        return found

    def to_artifact(self, x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy()


def _details(mixture: GaussianMixture) -> dict:
    return mixture.as_dict()


def _digests(mixture: GaussianMixture, removed: int) -> dict:
    """The judge is the exact mode assignment and the reference the exact mixture: both are its definition."""
    definition = json_digest({**mixture.as_dict(), "removed": removed})
    return {"judge": definition, "reference": definition}


def _gmm_task(prefix: str, mixture: GaussianMixture, removed: int, description: str) -> Task:
    return class_removal(
        prefix, removed, partial(_runtime, mixture),
        version=VERSION,
        description=f"{description}; remove mode {removed}",
        shape=(mixture.dim,),
        n_classes=len(mixture.weights),
        metrics=("forbidden_rate", "kl_classes", "wasserstein", "posterior_mae"),
        protocols=PROTOCOLS,
        digests=partial(_digests, mixture, removed),
        details=partial(_details, mixture),
        quality_metric="wasserstein",
        # negation, negation_logit: the negation set's predictions (safe-denoiser-theorem); here the set is the exact
        # forbidden mode, so they equal neg and posterior_logit; negation_set: 515 draws from it (safe-denoiser; see ExactDenoiser)
        predictions=("uncond", "neg", "remember", "posterior_logit", "negation", "negation_logit", "negation_set"),
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
