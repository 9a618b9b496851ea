"""Negative Prompting (paper Eq. 6): eps = eps_u - scale * (eps_n - eps_u), at every step."""
from __future__ import annotations

import torch

from negguide.methods.base import GuidanceMethod, Predictions, State, constant
from negguide.methods.schedule import Step


class NegativePrompting(GuidanceMethod):
    name = "np"
    reference = "Koulischer et al. 2025, Eq. 6; code: github.com/FelixKoulischer/Dynamic-Negative-Guidance (gen_batch_NP)"
    summary = "Negative Prompting: constant repulsion from the negative prediction"

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        eps_u, eps_n = preds["uncond"], preds["neg"]
        return eps_u - self.params.scale * (eps_n - eps_u), {"guidance_scale": constant(len(eps_u), self.params.scale, eps_u)}


class IntervalNegativePrompting(NegativePrompting):
    """NP applied only in a timestep interval (Kynkäänniemi et al. 2024, used negatively).

    The window [t_low, t_high] is the base class's, which every method has; here it is the point,
    so it is always part of the run's config.
    """

    name = "np-interval"
    reference = "Kynkäänniemi et al. 2024 (guidance in a limited interval), applied to NP"
    summary = "Negative Prompting restricted to a timestep interval [t_low, t_high]"
    window_in_config = True
