"""DDPM noise schedule (Ho et al. 2020) with respacing to S of the T training steps, and the
transition a sampler takes on one step (what a method may read of it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class Transition:
    """One sampler step from x_t: x_prev = mean(eps) + variance**0.5 * z with z standard normal.

    Every sampler here is affine in the step's noise prediction: mean(eps) = (shift + gain * eps) / divisor,
    where `shift` holds x_t and whatever history the sampler keeps (DPM-Solver++'s previous x0-prediction);
    `divisor` lets DDPM keep the float operations, hence the bits, of every run stored before samplers.
    `variance` is 0 for a deterministic step (DDIM with eta 0, DPM-Solver++, the last step of any).
    """

    sampler: str
    shift: torch.Tensor
    gain: float
    variance: float
    divisor: float = 1.0
    fresh_noise: Callable[[], torch.Tensor] | None = field(default=None, compare=False, repr=False)

    def noise(self) -> torch.Tensor:
        """Standard normal noise like x_t for a method's own use on this step (Safe Denoiser re-noises with it):
        counter-based like the sampler's, so a sample still depends only on (seed, its key), but never the
        noise the sampler draws."""
        if self.fresh_noise is None:
            raise RuntimeError("this transition was built outside a sampling loop and has no noise for methods")
        return self.fresh_noise()

    def mean(self, eps: torch.Tensor) -> torch.Tensor:
        """The mean of x_prev had the sampler been given `eps` on this step."""
        mean = self.shift + self.gain * eps
        return mean if self.divisor == 1.0 else mean / self.divisor

    @property
    def deterministic(self) -> bool:
        return self.variance <= 0.0


@dataclass(frozen=True)
class Step:
    """Constants of one reverse step x_t -> x_prev of a (respaced) DDPM chain."""

    index: int  # position in sampling order, 0 = first (noisiest) step
    t: int  # training timestep of x_t, in [0, T)
    t_prev: int  # training timestep of x_prev; -1 means clean data
    alpha: float  # 1 - beta of this respaced transition
    alpha_bar: float  # cumulative product at t
    alpha_bar_prev: float  # cumulative product at t_prev (1 for clean data)
    beta: float  # 1 - alpha
    beta_tilde: float  # DDPM posterior variance (1 - abar_prev) / (1 - abar) * beta
    transition: Transition | None = field(default=None, compare=False, repr=False)  # set by the sampler loop

    def mean(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Mean of the DDPM ancestral kernel p(x_prev | x_t) for a noise prediction eps (paper Eq. 2)."""
        return (x - self.beta / (1.0 - self.alpha_bar) ** 0.5 * eps) / self.alpha**0.5

    def ancestral(self, x: torch.Tensor, variance: str = "beta_tilde") -> Transition:
        """The DDPM ancestral step (Ho et al. 2020, Alg. 2) as a transition; no noise on the step to clean data."""
        sigma2 = 0.0 if self.t_prev < 0 else (self.beta_tilde if variance == "beta_tilde" else self.beta)
        return Transition("ddpm", x, -(self.beta / (1.0 - self.alpha_bar) ** 0.5), sigma2, divisor=self.alpha**0.5)

    def taken(self, x: torch.Tensor) -> Transition:
        """The transition the sampler takes from x (a step built outside a sampler loop: DDPM with beta_tilde)."""
        return self.transition if self.transition is not None else self.ancestral(x)

    def x0(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The clean-data prediction of x_t for a noise prediction eps (Tweedie under the VP process)."""
        return (x - (1.0 - self.alpha_bar) ** 0.5 * eps) / self.alpha_bar**0.5


@dataclass(frozen=True)
class Schedule:
    """Linear-beta DDPM schedule of T training steps, sampled on S respaced steps."""

    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def alpha_bars(self) -> np.ndarray:
        """Cumulative products of (1 - beta_t) for t = 0 .. T-1, in float64."""
        betas = np.linspace(self.beta_start, self.beta_end, self.T, dtype=np.float64)
        return np.cumprod(1.0 - betas)

    def timesteps(self, steps: int) -> list[int]:
        """S training timesteps, evenly spaced and always including T-1 and 0, noisiest first."""
        if not 1 <= steps <= self.T:
            raise ValueError(f"steps must be in [1, {self.T}], got {steps}")
        return sorted({int(round(t)) for t in np.linspace(0, self.T - 1, steps)}, reverse=True)

    def steps(self, steps: int) -> list[Step]:
        """The respaced reverse chain: betas rebuilt from alpha_bar at the kept timesteps."""
        abar = self.alpha_bars()
        kept = self.timesteps(steps)
        chain = []
        for index, t in enumerate(kept):
            t_prev = kept[index + 1] if index + 1 < len(kept) else -1
            a_bar, a_bar_prev = float(abar[t]), float(abar[t_prev]) if t_prev >= 0 else 1.0
            alpha = a_bar / a_bar_prev
            beta = 1.0 - alpha
            beta_tilde = (1.0 - a_bar_prev) / (1.0 - a_bar) * beta
            chain.append(Step(index, t, t_prev, alpha, a_bar, a_bar_prev, beta, beta_tilde))
        return chain

    def as_dict(self) -> dict:
        return {"T": self.T, "beta_start": self.beta_start, "beta_end": self.beta_end}
