"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on the respaced chain: the harness's default."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from negguide.bench.samplers.base import Memory, Sampler, Settings
from negguide.methods.schedule import Step, Transition

VARIANCES = ("beta_tilde", "beta")


@dataclass(frozen=True)
class DDPMSettings(Settings):
    variance: str = "beta_tilde"  # noise variance: the DDPM posterior's beta_tilde, or beta (paper Algorithm 1, reference code)

    def validate(self) -> None:
        if self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {', '.join(VARIANCES)}, got {self.variance!r}")


class DDPM(Sampler):
    """x_prev = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, sigma_t^2 = beta_tilde_t or beta_t; no noise to clean data."""

    name = "ddpm"
    summary = "DDPM ancestral steps (the paper's sampler); variance beta_tilde (default) or beta"
    reference = "Ho et al. 2020, Algorithm 2; diffusers DDPMScheduler (variance_type fixed_small | fixed_large)"
    Settings = DDPMSettings

    def transition(self, step: Step, x: torch.Tensor, memory: Memory) -> Transition:
        return step.ancestral(x, self.settings.variance)
