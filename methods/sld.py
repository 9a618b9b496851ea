"""Safe Latent Diffusion (Schramowski et al. 2023) as adapted for class removal in the DNG paper.

d = eps_u - eps_n; an element-wise mask is on where d < threshold, with strength
min(s_s |d|, 1); the correction gets momentum; eps = eps_u - scale * corr. Warm-up steps apply
no guidance but still accumulate momentum, as in diffusers' StableDiffusionPipelineSafe.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from negguide.methods.base import GuidanceMethod, Params, Predictions, State
from negguide.methods.schedule import Step


@dataclass(frozen=True)
class SLDParams(Params):
    scale: float = 0.5
    threshold: float = 0.04
    s_s: float = 100.0  # mask strength per unit of |eps_u - eps_n|
    beta_m: float = 0.1  # momentum decay
    s_m: float = 0.2  # momentum scale
    warmup: int = 0  # steps without guidance at the start

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.beta_m < 1.0:
            raise ValueError(f"beta_m must be in [0, 1), got {self.beta_m}")
        if self.s_s < 0 or self.warmup < 0:
            raise ValueError("s_s and warmup must be >= 0")


class SafeLatentDiffusion(GuidanceMethod):
    name = "sld"
    reference = "Schramowski et al. 2023 (SLD) as adapted in Koulischer et al. 2025; code: FelixKoulischer/Dynamic-Negative-Guidance (gen_batch_SLD)"
    summary = "Safe Latent Diffusion: masked, momentum-accelerated negative guidance"
    Params = SLDParams

    def init_state(self, batch: int, like: torch.Tensor) -> State:
        return {"momentum": torch.zeros_like(like)}

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        p = self.params
        eps_u, eps_n = preds["uncond"], preds["neg"]
        diff = eps_u - eps_n
        mask = torch.where(diff < p.threshold, torch.clamp(p.s_s * diff.abs(), max=1.0), torch.zeros_like(diff))
        correction = -mask * diff + p.s_m * state["momentum"]
        momentum = p.beta_m * state["momentum"] + (1.0 - p.beta_m) * correction
        scale = p.scale if step.index >= p.warmup else 0.0
        # The traced scale is the mask's mean strength times the scale, per sample.
        effective = scale * mask.flatten(1).mean(1)
        return eps_u - scale * correction, {"momentum": momentum, "guidance_scale": effective}


