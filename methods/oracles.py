"""Oracles on exact tasks, where the true scores and posterior are known (paper Appendix B)."""
from __future__ import annotations

import torch

from negguide.methods.base import (
    GuidanceMethod,
    Predictions,
    State,
    constant,
    per_sample,
)
from negguide.methods.schedule import Step


class ExactDNG(GuidanceMethod):
    """DNG with the exact posterior p_t(c-|x_t): lam = scale * p/(1-p) (paper Eq. 10)."""

    name = "dng-exact"
    reference = "Koulischer et al. 2025, Eq. 10 and 17 (exact tasks, Appendix B)"
    summary = "DNG with the exact posterior (exact tasks only)"
    needs = ("uncond", "neg", "posterior_logit")

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        eps_u, eps_n, logit = preds["uncond"], preds["neg"], preds["posterior_logit"]
        lam = self.params.scale * torch.exp(logit)
        guided = eps_u - per_sample(lam, eps_u) * (eps_n - eps_u)
        return guided, {"guidance_scale": lam, "posterior": torch.sigmoid(logit)}


class RememberCFG(GuidanceMethod):
    """Positive CFG towards the to-remember distribution: eps_u + scale * (eps_r - eps_u)."""

    name = "cfg-remember"
    reference = "Ho & Salimans 2022 (CFG) towards the to-remember mixture; Koulischer et al. 2025, Eq. 17"
    summary = "positive CFG towards the to-remember modes (exact tasks only)"
    needs = ("uncond", "remember")

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        eps_u, eps_r = preds["uncond"], preds["remember"]
        return eps_u + self.params.scale * (eps_r - eps_u), {"guidance_scale": constant(len(eps_u), self.params.scale, eps_u)}
