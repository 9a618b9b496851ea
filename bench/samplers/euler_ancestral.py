"""Euler ancestral (Karras et al. 2022's sigma parametrisation; k-diffusion's sample_euler_ancestral,
diffusers' EulerAncestralDiscreteScheduler) on the chain's discrete timesteps.

The step runs in the variance-exploding coordinates x / sqrt(abar) with sigma = sqrt((1 - abar) / abar)
and is mapped back; eta scales the ancestral noise (1: diffusers; 0: plain Euler, i.e. DDIM eta 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from negguide.bench.samplers.base import Memory, Sampler, Settings
from negguide.methods.schedule import Step, Transition


@dataclass(frozen=True)
class EulerAncestralSettings(Settings):
    eta: float = 1.0  # share of the ancestral noise (k-diffusion's eta; diffusers fixes 1)

    def validate(self) -> None:
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")


def ve_sigma(alpha_bar: float) -> float:
    return ((1.0 - alpha_bar) / alpha_bar) ** 0.5


class EulerAncestral(Sampler):
    """sigma_up = min(sigma', eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2)), sigma_down = sqrt(sigma'^2 - sigma_up^2);
    x' = x + eps (sigma_down - sigma) + sigma_up z in VE coordinates."""

    name = "euler-ancestral"
    summary = "Euler ancestral steps in sigma space (diffusers' EulerAncestralDiscreteScheduler); eta 1 default"
    reference = "Karras et al. 2022; k-diffusion sample_euler_ancestral; diffusers EulerAncestralDiscreteScheduler"
    Settings = EulerAncestralSettings

    def transition(self, step: Step, x: torch.Tensor, memory: Memory) -> Transition:
        sigma = ve_sigma(step.alpha_bar)
        sigma_to = ve_sigma(step.alpha_bar_prev) if step.t_prev >= 0 else 0.0
        sigma_up = min(sigma_to, self.settings.eta * (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5)
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        # Back to the VP state: x_prev = sqrt(abar') x'_VE.
        to_vp = step.alpha_bar_prev**0.5
        return Transition(self.name, to_vp / step.alpha_bar**0.5 * x, to_vp * (sigma_down - sigma), to_vp**2 * sigma_up**2)
