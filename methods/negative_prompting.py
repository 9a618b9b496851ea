"""Negative Prompting (paper Eq. 6): eps = eps_u - scale * (eps_n - eps_u), at every step."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.schedule import Step
from methods.base import GuidanceMethod, Params, Predictions, State, constant


class NegativePrompting(GuidanceMethod):
    name = "np"
    summary = "Negative Prompting: constant repulsion from the negative prediction"

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        eps_u, eps_n = preds["uncond"], preds["neg"]
        scale = self.params.scale if self.active(step) else 0.0
        return eps_u - scale * (eps_n - eps_u), {"guidance_scale": constant(len(eps_u), scale, eps_u)}

    def active(self, step: Step) -> bool:
        return True


@dataclass(frozen=True)
class IntervalParams(Params):
    t_low: int = 0  # guidance on only for training timesteps t_low <= t <= t_high
    t_high: int = 999

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.t_low <= self.t_high:
            raise ValueError(f"need 0 <= t_low <= t_high, got t_low={self.t_low}, t_high={self.t_high}")


class IntervalNegativePrompting(NegativePrompting):
    """NP applied only in a timestep interval (Kynkäänniemi et al. 2024, used negatively)."""

    name = "np-interval"
    summary = "Negative Prompting restricted to a timestep interval [t_low, t_high]"
    Params = IntervalParams

    def active(self, step: Step) -> bool:
        return self.params.t_low <= step.t <= self.params.t_high
