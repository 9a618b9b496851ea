"""Dynamic Negative Guidance (Koulischer et al. 2025, Algorithms 1 and 2).

The guidance scale is lam_t = scale * p / (1 - p), where p is a per-sample posterior of the
negative concept tracked along the chain from the unguided and negative means; the posterior
of the previous step guides the current one (the paper's staggered update).

The paper derives the update for a stochastic Gaussian step: Bayes' rule on the realised x_prev
under the two kernels N(mu_u, sigma^2) and N(mu_n, sigma^2). Under another sampler the means are
the DDPM ancestral kernel's (`means="ddpm"`, the default: the realised step scored as if it had been
DDPM's, the reference code's view) or that sampler's (`means="sampler"`: mu = its transition's mean
for eps_u and eps_n). sigma^2 is beta_tilde (the reference code), beta (Algorithm 2) or the variance the sampler's
step actually adds (`variance="sampler"`): a deterministic step (DDIM eta 0, DPM-Solver++) has no
likelihood ratio, so with "sampler" the posterior stands still there, while beta_tilde and beta score
the realised step as if it had been drawn with the ancestral kernel's noise. On DDPM's own steps
every choice of `means` gives the same numbers; under DDIM (eta 0) and DPM-Solver++ the DDPM means
track the exact posterior best on both mixture tasks, and a frozen posterior worst
(docs/results/dng-posterior-samplers.md, benchmarks/dng_posterior_samplers.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from negguide.methods.base import GuidanceMethod, Params, Predictions, State, per_sample
from negguide.methods.schedule import Step

VARIANCES = ("beta_tilde", "beta", "sampler")
MEANS = ("ddpm", "sampler")


@dataclass(frozen=True)
class DNGParams(Params):
    added_later = {"means": "ddpm"}  # runs stored before samplers keep their ids
    follows_sampler = {"variance": "variance"}  # DDPM with beta scores with beta unless told otherwise (the run prints both)

    scale: float = 5.0  # lam0 of the paper
    prior: float = 0.25
    tau: float = 0.25  # temperature on the distance difference
    delta: float = 0.0  # offset biasing the posterior upwards
    p_min: float = 1e-6
    p_max: float = 0.99
    # sigma^2 of the update: reference code "beta_tilde", Algorithm 2 "beta", or the sampler's step's. Unless set, it
    # follows DDPM's own `variance` setting (beta_tilde by default); other samplers have none, so beta_tilde stands
    variance: str = "beta_tilde"
    means: str = "ddpm"  # the two kernels' means: the DDPM ancestral kernel's (tracks best, measured), or the sampler's transition

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.prior < 1.0:
            raise ValueError(f"prior must be in (0, 1), got {self.prior}")
        if not 0.0 < self.p_min < self.p_max < 1.0:
            raise ValueError(f"need 0 < p_min < p_max < 1, got p_min={self.p_min}, p_max={self.p_max}")
        if self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {', '.join(VARIANCES)}, got {self.variance!r}")
        if self.means not in MEANS:
            raise ValueError(f"means must be one of {', '.join(MEANS)}, got {self.means!r}")


class DynamicNegativeGuidance(GuidanceMethod):
    name = "dng"
    reference = "Koulischer et al. 2025 (ICLR), Algorithms 1-2; code: github.com/FelixKoulischer/Dynamic-Negative-Guidance (gen_batch_DNG)"
    summary = "Dynamic Negative Guidance: scale * p/(1-p) with a posterior tracked along the chain"
    Params = DNGParams

    def init_state(self, batch: int, like: torch.Tensor) -> State:
        log_p = torch.full((batch,), math.log(self.params.prior), dtype=torch.float64, device=like.device)
        return self._with_scale(log_p, like.dtype)

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        eps_u, eps_n = preds["uncond"], preds["neg"]
        lam = per_sample(state["guidance_scale"], eps_u)
        return eps_u - lam * (eps_n - eps_u), state

    def observe(self, step: Step, x: torch.Tensor, x_prev: torch.Tensor, preds: Predictions, state: State) -> State:
        p = self.params
        taken = step.taken(x)
        sigma2 = {"beta_tilde": step.beta_tilde, "beta": step.beta, "sampler": taken.variance}[p.variance]
        if sigma2 <= 0.0:  # no noise on this step: the likelihood ratio is undefined
            return state
        mean = taken.mean if p.means == "sampler" else (lambda eps: step.mean(x, eps))
        mu_u, mu_n = mean(preds["uncond"]), mean(preds["neg"])
        diff = ((x_prev - mu_n) ** 2).flatten(1).sum(1) - ((x_prev - mu_u) ** 2).flatten(1).sum(1)
        log_p = state["log_posterior"] + (-p.tau * diff.double() + p.delta) / (2.0 * sigma2)
        log_p = log_p.clamp(math.log(p.p_min), math.log(p.p_max))
        return self._with_scale(log_p, x.dtype)

    def _with_scale(self, log_p: torch.Tensor, dtype: torch.dtype) -> State:
        posterior = log_p.exp()
        # p/(1-p) in log space: p never exceeds p_max < 1, so the odds stay finite.
        odds = torch.exp(log_p - torch.log1p(-posterior))
        return {"log_posterior": log_p, "posterior": posterior.to(dtype), "guidance_scale": (self.params.scale * odds).to(dtype)}
