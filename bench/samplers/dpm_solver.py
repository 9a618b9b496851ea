"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2, the multistep second-order data-prediction solver),
as diffusers' DPMSolverMultistepScheduler runs it by default for Stable Diffusion: midpoint form, first
order on the first step (no history yet) and on the last (to sigma = 0, `final_sigmas_type="zero"`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from negguide.bench.samplers.base import Memory, Sampler, Settings
from negguide.methods.schedule import Step, Transition


@dataclass(frozen=True)
class DPMSolverSettings(Settings):
    order: int = 2  # 2: DPM-Solver++(2M); 1: first order (the same step as DDIM with eta 0)

    def validate(self) -> None:
        if self.order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {self.order}")


def log_snr_half(alpha_bar: float) -> float:
    """lambda = log(alpha / sigma) of the VP process, with alpha^2 = abar and sigma^2 = 1 - abar."""
    return 0.5 * (math.log(alpha_bar) - math.log1p(-alpha_bar))


class DPMSolverPP(Sampler):
    """x' = (sigma'/sigma) x - alpha' (e^-h - 1) (D0 + D1/2), D0 = x0(eps), D1 = (D0 - x0_prev) h / h_prev, h = lambda' - lambda."""

    name = "dpm-solver++"
    summary = "DPM-Solver++(2M): deterministic multistep solver, diffusers' default for Stable Diffusion"
    reference = "Lu et al. 2022, DPM-Solver++ Algorithm 2 (2M); diffusers DPMSolverMultistepScheduler (midpoint, final sigma 0)"
    Settings = DPMSolverSettings

    def transition(self, step: Step, x: torch.Tensor, memory: Memory) -> Transition:
        alpha, sigma = step.alpha_bar**0.5, (1.0 - step.alpha_bar) ** 0.5
        alpha_to, sigma_to = step.alpha_bar_prev**0.5, (1.0 - step.alpha_bar_prev) ** 0.5 if step.t_prev >= 0 else 0.0
        decay = (alpha / sigma) * (sigma_to / alpha_to)  # e^-h, exactly 0 on the step to clean data
        c = alpha_to * (decay - 1.0)
        # x0(eps) = x / alpha - (sigma / alpha) eps; weight k on it, the rest on the previous x0.
        k, shift = 1.0, sigma_to / sigma * x
        if self.settings.order == 2 and "x0" in memory and step.t_prev >= 0:
            h, h_prev = math.log(1.0 / decay), log_snr_half(step.alpha_bar) - memory["log_snr_half"]
            k = 1.0 + 0.5 * h / h_prev
            shift = shift + c * (0.5 * h / h_prev) * memory["x0"]
        return Transition(self.name, shift - c * k / alpha * x, c * k * sigma / alpha, 0.0)

    def remember(self, step: Step, x: torch.Tensor, eps: torch.Tensor, memory: Memory) -> Memory:
        return {"x0": step.x0(x, eps), "log_snr_half": log_snr_half(step.alpha_bar)}
