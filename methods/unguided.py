"""No guidance: the unconditional model's own samples (the reference every method is judged against)."""
from __future__ import annotations

import torch

from negguide.methods.base import GuidanceMethod, Predictions, State, constant
from negguide.methods.schedule import Step


class Unguided(GuidanceMethod):
    name = "none"
    reference = "Ho et al. 2020 (DDPM ancestral sampling)"
    summary = "unguided sampling of the unconditional model"
    needs = ("uncond",)

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        eps_u = preds["uncond"]
        return eps_u, {"guidance_scale": constant(len(eps_u), 0.0, eps_u)}
