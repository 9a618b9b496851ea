"""The exact analogue of the text-to-image related/unrelated experiment: task gmm2d-prompts.

Same layout and convention as bench/task_t2i.py (reference, related, unrelated arms sharing noise;
`uncond` is the positive prompt's exact model, `null` the full mixture), on the closed-form mixture
of datasets/gmm_prompts.py. The positive model is exact, so no positive CFG is applied (w = 1).
Judged by how much each arm moves samples away from their unguided twin, and by the distance of
each arm to its ideal outcome.
"""
from __future__ import annotations

import numpy as np
import torch

from bench.schedule import Step
from bench.task_t2i import ARMS, UNRELATED, PairedLayout, PairedRuntime, guidance_metrics
from bench.tasks import Profile, Task, register
from datasets.gmm_prompts import PROBLEM, PromptProblem
from metrics.base import MetricValue, metric
from metrics.distances import wasserstein_to_mixture

VERSION = "1"
LAYOUT = PairedLayout(prompts=1)
PROFILES = {
    "quick": Profile(samples=LAYOUT.rows(2048), steps=500, batch_size=LAYOUT.rows(2048)),
    "paper": Profile(samples=LAYOUT.rows(32_768), steps=1000, batch_size=LAYOUT.rows(8192)),
}
METRICS = ("change_related", "change_unrelated", "modes_changed_related", "modes_changed_unrelated", "q_modes",
           "forbidden_rate", "w1_related", "w1_unrelated", "guidance_related", "guidance_unrelated")


class GMMPromptsRuntime(PairedRuntime):
    """Closed-form predictions per arm, and the paired judge."""

    dtype = torch.float64
    layout = LAYOUT

    def __init__(self, problem: PromptProblem):
        torch.set_num_threads(1)  # tiny tensors: extra threads only add contention
        self.problem = problem
        self.denoiser = self._denoise

    def _per_arm(self, x: torch.Tensor, arm: np.ndarray, related, unrelated) -> torch.Tensor:
        """Rows of the unrelated arm from `unrelated(x)`, every other row (reference included) from `related(x)`."""
        use_unrelated = torch.as_tensor(arm == UNRELATED, device=x.device)
        a, b = related(x), unrelated(x)
        return torch.where(use_unrelated.reshape(-1, *([1] * (a.dim() - 1))), b, a)

    def _denoise(self, x: torch.Tensor, step: Step, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        _, arm = self.bound_rows(len(x))
        self.check_pairing(x, step)
        p, abar = self.problem, step.alpha_bar
        sources = {
            "uncond": lambda: p.positive_mixture.eps(x, abar),
            "null": lambda: p.mixture.eps(x, abar),
            "neg": lambda: self._per_arm(x, arm, lambda z: p.negative(True).eps(z, abar), lambda z: p.negative(False).eps(z, abar)),
            "remember": lambda: self._per_arm(x, arm, lambda z: p.target(True).eps(z, abar), lambda z: p.target(False).eps(z, abar)),
            "posterior_logit": lambda: self._per_arm(x, arm, lambda z: p.posterior_logit(z, abar, True), lambda z: p.posterior_logit(z, abar, False)).to(x.dtype),
        }
        unknown = set(names) - set(sources)
        if unknown:
            raise KeyError(f"gmm2d-prompts provides {sorted(sources)}, not {sorted(unknown)}")
        return {name: sources[name]() for name in names}

    def exact_trace(self, x: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        _, arm = self.bound_rows(len(x))
        logit = self._per_arm(x, arm, lambda z: self.problem.posterior_logit(z, step.alpha_bar, True),
                              lambda z: self.problem.posterior_logit(z, step.alpha_bar, False))
        return {"posterior_exact": torch.sigmoid(logit)}

    def evaluate(self, x: torch.Tensor, traces: dict[str, np.ndarray], wanted: tuple[str, ...]) -> list[MetricValue]:
        triples = self.layout.triples(len(x))
        n = len(triples)
        points = x.cpu().numpy().reshape(len(x), -1)
        modes = self.problem.mixture.assign(x).cpu().numpy()
        ref, rel, unrel = (triples[:, a] for a in range(3))
        changed_rel, changed_unrel = float(np.mean(modes[rel] != modes[ref])), float(np.mean(modes[unrel] != modes[ref]))
        values = [
            metric("change_related", np.linalg.norm(points[rel] - points[ref], axis=1).mean(), n),
            metric("change_unrelated", np.linalg.norm(points[unrel] - points[ref], axis=1).mean(), n),
            metric("modes_changed_related", changed_rel, n),
            metric("modes_changed_unrelated", changed_unrel, n),
            metric("q_modes", changed_rel - changed_unrel, n),
            metric("forbidden_rate", float(np.mean(modes[rel] == self.problem.related)), n),
            metric("w1_related", wasserstein_to_mixture(points[rel], self.problem.target(True)), n),
            metric("w1_unrelated", wasserstein_to_mixture(points[unrel], self.problem.target(False)), n),
            *guidance_metrics(traces, self.layout, 3 * n, n),
        ]
        return [v for v in values if v.name in wanted]

    def to_artifact(self, x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy()

    def class_labels(self, x: torch.Tensor) -> np.ndarray:
        return self.problem.mixture.assign(x).cpu().numpy()


def _task(problem: PromptProblem) -> Task:
    return Task(
        name="gmm2d-prompts",
        version=VERSION,
        family="gmm-prompts",
        description="exact analogue of text-to-image related vs unrelated negative prompts: 6-mode 2D ring, positive prompt = modes 0-2, "
                    "related negative = mode 1, unrelated = mode 4; samples are (reference, related, unrelated) triples sharing noise",
        shape=(problem.mixture.dim,),
        removed=problem.related,
        metrics=METRICS,
        profiles=PROFILES,
        load=lambda: GMMPromptsRuntime(problem),
        details=lambda: {**problem.as_dict(), "n_classes": len(problem.mixture.weights), "arms": list(ARMS),
                         "layout": "sample i: arm i % 3, noise key i // 3", "positive_cfg": 1.0},
        predictions=("uncond", "neg", "null", "remember", "posterior_logit"),
        quality_metric="change_unrelated",
        safety_threshold=0.02,
    )


register(_task(PROBLEM))
