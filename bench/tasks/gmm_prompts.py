"""The exact analogue of the text-to-image related/unrelated experiment: task gmm2d-prompts.

Same layout and convention as the text-to-image tasks (bench/tasks/paired.py: reference, related,
unrelated arms sharing noise; `uncond` is the positive prompt's exact model, `null` the full
mixture), on the closed-form mixture of datasets/gmm_prompts.py. The positive model is exact, so no
positive CFG is applied (w = 1). Judged by how much each arm moves samples away from their unguided
twin, and by the distance of each arm to its ideal outcome.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Iterable

import numpy as np
import torch

from negguide.bench.tasks.digests import json_digest
from negguide.bench.tasks.paired import ARMS, UNRELATED, PairedLayout, PairedRows, guidance_statistics
from negguide.bench.tasks.spec import PAPER_SAMPLER, Conditioning, Records, RunProtocol, Task, Traces
from negguide.datasets.gmm_prompts import PROBLEM, PromptProblem
from negguide.methods.base import Predictions
from negguide.methods.schedule import Step
from negguide.metrics.base import statistic
from negguide.metrics.intervals import Statistic

VERSION = "1"
LAYOUT = PairedLayout(prompts=1)
PROTOCOLS = {
    "quick": RunProtocol(samples=LAYOUT.rows(2048), steps=500, batch_size=LAYOUT.rows(2048)),
    "standard": RunProtocol(samples=LAYOUT.rows(8192), steps=1000, batch_size=LAYOUT.rows(4096)),
    "paper": RunProtocol(samples=LAYOUT.rows(32_768), steps=1000, batch_size=LAYOUT.rows(8192), sampler=PAPER_SAMPLER),
}
METRICS = ("change_related", "change_unrelated", "modes_changed_related", "modes_changed_unrelated", "q_modes",
           "forbidden_rate", "w1_related", "w1_unrelated", "guidance_related", "guidance_unrelated")
PerArm = Callable[[torch.Tensor, bool], torch.Tensor]  # (x, related arm?) -> prediction


class GMMPromptsRuntime:
    """Closed-form predictions per arm, and the paired judge."""

    dtype = torch.float64
    layout = LAYOUT

    def __init__(self, problem: PromptProblem, device: torch.device):
        self.problem, self.device = problem, device

    def condition(self, ids: np.ndarray) -> Conditioning:
        rows = PairedRows(np.asarray(ids, dtype=np.int64), self.layout)
        return Conditioning(partial(self._denoise, rows), self.layout.noise_keys(ids), finalize=partial(rows.finalize, 1.0),
                            exact_trace=partial(self._exact_trace, rows))

    def _per_arm(self, rows: PairedRows, x: torch.Tensor, of_arm: PerArm) -> torch.Tensor:
        """Rows of the unrelated arm from of_arm(x, False), every other row (reference included) from of_arm(x, True)."""
        related, unrelated = of_arm(x, True), of_arm(x, False)
        return torch.where(rows.where_arm(UNRELATED, related), unrelated, related)

    def _denoise(self, rows: PairedRows, x: torch.Tensor, step: Step, names: tuple[str, ...]) -> Predictions:
        rows.check_pairing(x, step)
        p, abar = self.problem, step.alpha_bar
        sources = {
            "uncond": lambda: p.positive_mixture.eps(x, abar),
            "null": lambda: p.mixture.eps(x, abar),
            "neg": lambda: self._per_arm(rows, x, lambda z, related: p.negative(related).eps(z, abar)),
            "remember": lambda: self._per_arm(rows, x, lambda z, related: p.target(related).eps(z, abar)),
            "posterior_logit": lambda: self._per_arm(rows, x, lambda z, related: p.posterior_logit(z, abar, related)).to(x.dtype),
        }
        unknown = set(names) - set(sources)
        if unknown:
            raise KeyError(f"gmm2d-prompts provides {sorted(sources)}, not {sorted(unknown)}")
        return {name: sources[name]() for name in names}

    def _exact_trace(self, rows: PairedRows, x: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        logit = self._per_arm(rows, x, lambda z, related: self.problem.posterior_logit(z, step.alpha_bar, related))
        return {"posterior_exact": torch.sigmoid(logit)}

    def records(self, x: torch.Tensor, wanted: tuple[str, ...]) -> Records:
        """Each sample's mode, arm and position."""
        ids = np.arange(len(x))
        return {"label": self.problem.mixture.assign(x).cpu().numpy().astype(np.int64), "arm": self.layout.arm(ids),
                "x": x.cpu().numpy().reshape(len(x), -1)}

    def statistics(self, records: Records, traces: Traces, wanted: tuple[str, ...]) -> list[Statistic]:
        """Every metric over triples (reference, related, unrelated), the unit that shares its noise."""
        triples = self.layout.triples(len(records["label"]))
        modes, points = records["label"], records["x"]
        ref, rel, unrel = (triples[:, a] for a in range(3))
        changed_rel, changed_unrel = modes[rel] != modes[ref], modes[unrel] != modes[ref]
        return [
            statistic("change_related", values=np.linalg.norm(points[rel] - points[ref], axis=1)),
            statistic("change_unrelated", values=np.linalg.norm(points[unrel] - points[ref], axis=1)),
            statistic("modes_changed_related", hits=changed_rel),
            statistic("modes_changed_unrelated", hits=changed_unrel),
            statistic("q_modes", first=changed_rel, second=changed_unrel),
            statistic("forbidden_rate", hits=modes[rel] == self.problem.related),
            statistic("w1_related", points=points[rel], target=self.problem.target(True)),
            statistic("w1_unrelated", points=points[unrel], target=self.problem.target(False)),
            *guidance_statistics(traces, triples),
        ]

    def to_artifact(self, x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy()


def _details(problem: PromptProblem) -> dict:
    return {**problem.as_dict(), "arms": list(ARMS), "layout": "sample i: arm i % 3, noise key i // 3", "positive_cfg": 1.0}


def _digests(problem: PromptProblem) -> dict:
    definition = json_digest(problem.as_dict())
    return {"judge": definition, "reference": definition}


def tasks(options: object = None) -> Iterable[Task]:
    yield Task(
        name="gmm2d-prompts",
        version=VERSION,
        family="gmm-prompts",
        description="exact analogue of text-to-image related vs unrelated negative prompts: 6-mode 2D ring, positive prompt = modes 0-2, "
                    "related negative = mode 1, unrelated = mode 4; samples are (reference, related, unrelated) triples sharing noise",
        shape=(PROBLEM.mixture.dim,),
        removed=PROBLEM.related,
        n_classes=len(PROBLEM.mixture.weights),
        metrics=METRICS,
        protocols=PROTOCOLS,
        digests=partial(_digests, PROBLEM),
        load=partial(GMMPromptsRuntime, PROBLEM),
        details=partial(_details, PROBLEM),
        predictions=("uncond", "neg", "null", "remember", "posterior_logit"),
        quality_metric="change_unrelated",
        safety_threshold=0.02,
        intra_op_threads=1,
        default_device="cpu",
    )
