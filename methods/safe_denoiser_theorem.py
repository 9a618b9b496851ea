"""The closed form of Safe Denoiser's Theorem with kept-data odds (`safe-denoiser-theorem`): Kim, Kim, Yusuf,
Ermon & Park 2025, "Training-Free Safe Denoisers for Safe Use of Diffusion Models", arXiv 2502.08011, NeurIPS 2025.

This is NOT the authors' algorithm as their code runs it (that is `safe-denoiser`, methods/safe_denoiser.py: a
kernel on the x0-prediction, a gate, x0 - 0.33 E_B and re-noising). It is the identity their algorithm approximates,
computed with the task's estimate of the posterior odds, kept here as a second method to compare against.

The data split by a negation set B into a safe and an unsafe part, p_data = Z_safe p_safe + Z_unsafe p_unsafe,
gives (the paper's Theorem 3.2, Eqs. 4-5)

    E_safe[x0|x_t] = E_data[x0|x_t] + beta*(x_t) (E_data[x0|x_t] - E_unsafe[x0|x_t])                  (4)
    beta*(x_t)     = Z_unsafe p_unsafe,t(x_t) / (Z_safe p_safe,t(x_t)) = P(x0 in B | x_t) / P(x0 not in B | x_t)   (5)

and the practical algorithm estimates E_unsafe with a Gaussian kernel over the negation examples
(Eq. 6) and replaces beta* by eta * beta (Eq. 7), on critical timesteps only (Algorithm 1), optionally
switched off where the weight is below a threshold beta_t.

In eps space (every method's convention): x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) is affine in eps with
the same offset for every prediction, so Eq. 4 is exactly

    eps_safe = eps_u + beta (eps_u - eps_B),      beta = eta * min(exp(negation_logit), beta_max)

with eps_u = preds["uncond"], eps_B = preds["negation"] (the eps of the kernel estimate of E[x0 | x_t, x0 in B])
and negation_logit = the task's estimate of log beta*(x_t) (see the tasks: exact on the Gaussian mixtures, a
kernel estimate over real digits on MNIST). beta = 0 where exp(negation_logit) < `threshold`; the critical
timesteps are the window [t_low, t_high] every method has. It is Negative Prompting with a state-dependent
scale beta*(x_t); with eta = 1 and the exact predictions of the gmm tasks it is the exact safe denoiser,
i.e. eps_safe = the to-remember mixture's eps (and `dng-exact` with scale 1).

Not from the paper: `beta_max` (beta* capped, P(x0 in B | x_t) <= beta_max / (1 + beta_max)); a kernel estimate
of beta* late in the chain is a nearest-neighbour vote (|log beta*| up to ~1e6 on MNIST) and exp() would
overflow. Where beta* is huge the result rests on eps_u - eps_B ~ (1 - P), which rounding loses even in float64.
The paper's practical beta (the negation set's kernel density alone, times eta) is not used: in pixel space its
log is about -1100 on MNIST all along the chain, so no constant eta makes it a weight; the tasks' log-odds use the
kept data as the denominator instead (see NegationKernel). The reference code repels only on early timesteps
(t >= 780 of 1000 for Stable Diffusion): pass t_low for that. Kept-data odds: the denominator of beta* uses the
kept reference set (the tasks' `negation_logit`), which the paper's practical beta does not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from negguide.methods.base import GuidanceMethod, Params, Predictions, State, per_sample
from negguide.methods.schedule import Step


@dataclass(frozen=True)
class SafeDenoiserTheoremParams(Params):
    scale: float = 1.0  # eta of Eq. 7: beta = eta * beta*; 1 is the theorem's weight (Eq. 4-5)
    beta_max: float = 99.0  # cap on the estimated beta* = P/(1-P), i.e. P capped at 0.99 (not in the paper)
    threshold: float = 0.0  # beta_t of Algorithm 1: no repulsion where the estimated beta* is below it (0: never)

    def validate(self) -> None:
        super().validate()
        if not self.beta_max > 0.0 or self.beta_max != self.beta_max:
            raise ValueError(f"beta_max must be > 0 (inf for no cap), got {self.beta_max}")
        if not 0.0 <= self.threshold < float("inf"):
            raise ValueError(f"threshold must be a finite number >= 0, got {self.threshold}")


class SafeDenoiserTheorem(GuidanceMethod):
    name = "safe-denoiser-theorem"
    reference = ("Kim, Kim, Yusuf, Ermon & Park 2025 (NeurIPS), arXiv 2502.08011, Theorem 3.2 / Eqs. 4-7, Algorithm 1; "
                 "code: github.com/MingyuKim87/Safe_Denoiser")
    summary = "Safe Denoiser's Theorem 3.2 in closed form: repel from a negation set with weight beta*(x_t) = P(x0 in set | x_t) / P(x0 not in set | x_t)"
    needs = ("uncond", "negation", "negation_logit")
    Params = SafeDenoiserTheoremParams

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        p = self.params
        eps_u, eps_b, logit = preds["uncond"], preds["negation"], preds["negation_logit"].double()
        odds = torch.exp(logit.clamp(max=math.log(p.beta_max)))  # the estimated beta*, capped (finite even for huge logits)
        beta = p.scale * odds
        if p.threshold > 0.0:
            beta = torch.where(odds < p.threshold, torch.zeros_like(beta), beta)
        guided = eps_u + per_sample(beta.to(eps_u.dtype), eps_u) * (eps_u - eps_b)
        return guided, {"guidance_scale": beta.to(eps_u.dtype), "posterior": torch.sigmoid(logit).to(eps_u.dtype)}
