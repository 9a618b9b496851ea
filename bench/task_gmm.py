"""Exact Gaussian-mixture removal tasks: gmm1d-remove-K and gmm2d-remove-K (paper Fig. 1, 3)."""
from __future__ import annotations

import numpy as np
import torch

from bench.schedule import Step
from bench.tasks import Profile, Task, register
from datasets.gmm import GMM1D, GMM2D, ExactDenoiser, GaussianMixture, RemovalProblem
from metrics.base import MetricValue, metric
from metrics.classes import forbidden_rate, kl_classes
from metrics.distances import wasserstein_to_mixture

VERSION = "1"
PROFILES = {"quick": Profile(samples=4096, steps=1000, batch_size=4096), "paper": Profile(samples=100_000, steps=1000, batch_size=10_000)}


class GMMRuntime:
    """Closed-form denoiser and exact judge of one removal problem."""

    dtype = torch.float64

    def __init__(self, problem: RemovalProblem):
        # Tensors here are tiny: extra intra-op threads only add contention (20x slower measured).
        torch.set_num_threads(1)
        self.problem = problem
        self.denoiser = ExactDenoiser(problem)

    def exact_trace(self, x: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        return self.denoiser.exact_posterior(x, step)

    def evaluate(self, x: torch.Tensor, traces: dict[str, np.ndarray], wanted: tuple[str, ...]) -> list[MetricValue]:
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
        return [v for v in values if v.name in wanted]

    def to_artifact(self, x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy()

    def class_labels(self, x: torch.Tensor) -> np.ndarray:
        return self.problem.mixture.assign(x).cpu().numpy()


def _gmm_task(prefix: str, mixture: GaussianMixture, removed: int, description: str) -> Task:
    problem = RemovalProblem(mixture, removed)
    return Task(
        name=f"{prefix}-remove-{removed}",
        version=VERSION,
        family="gmm",
        description=f"{description}; remove mode {removed}",
        shape=(mixture.dim,),
        removed=removed,
        metrics=("forbidden_rate", "kl_classes", "wasserstein", "posterior_mae"),
        profiles=PROFILES,
        load=lambda: GMMRuntime(problem),
        details=lambda: {**mixture.as_dict(), "n_classes": len(mixture.weights)},
        quality_metric="wasserstein",
        predictions=("uncond", "neg", "remember", "posterior_logit"),
    )


for _k in range(len(GMM1D.weights)):
    register(_gmm_task("gmm1d", GMM1D, _k, "1D mixture of 3 equal Gaussians at -3, 0, 3 (std 0.5)"))
for _k in range(len(GMM2D.weights)):
    register(_gmm_task("gmm2d", GMM2D, _k, "2D mixture of 5 equal Gaussians: centre and the corners of a square (std 0.5)"))
