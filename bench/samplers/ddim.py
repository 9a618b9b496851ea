"""DDIM (Song et al. 2021, Eq. 12): eta 0 is deterministic, eta 1 is DDPM's ancestral step with beta_tilde."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from negguide.bench.samplers.base import Memory, Sampler, Settings
from negguide.methods.schedule import Step, Transition


@dataclass(frozen=True)
class DDIMSettings(Settings):
    eta: float = 0.0  # share of the ancestral noise: 0 deterministic (diffusers' default), 1 = DDPM with beta_tilde

    def validate(self) -> None:
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")


class DDIM(Sampler):
    """x_prev = sqrt(abar') x0(eps) + sqrt(1 - abar' - sigma^2) eps + sigma z, sigma^2 = eta^2 beta_tilde."""

    name = "ddim"
    summary = "DDIM: deterministic at eta 0 (default), DDPM-like at eta 1"
    reference = "Song et al. 2021 (ICLR), Eq. 12; diffusers DDIMScheduler (set_alpha_to_one, no clipping)"
    Settings = DDIMSettings

    def transition(self, step: Step, x: torch.Tensor, memory: Memory) -> Transition:
        abar, abar_prev = step.alpha_bar, step.alpha_bar_prev
        sigma2 = self.settings.eta**2 * step.beta_tilde if step.t_prev >= 0 else 0.0
        # x0 = (x - sqrt(1 - abar) eps) / sqrt(abar), substituted: affine in eps.
        to_x0 = (abar_prev / abar) ** 0.5
        direction = max(1.0 - abar_prev - sigma2, 0.0) ** 0.5
        return Transition(self.name, to_x0 * x, direction - to_x0 * (1.0 - abar) ** 0.5, sigma2)
