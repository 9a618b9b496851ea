"""Adaptive Projected Guidance (Sadat, Hilliges, Weber 2024), used negatively.

Sadat et al., "Eliminating oversaturation and artifacts of high guidance scales in diffusion
models", ICLR 2025 (arXiv:2410.02416), Algorithm 1; reference implementation in diffusers
(src/diffusers/guiders/adaptive_projected_guidance.py, `normalized_guidance` and `MomentumBuffer`).
APG rewrites the CFG step D_c + (w - 1)(D_c - D_u) as: the update D_c - D_u goes through a
momentum buffer, is rescaled to an L2 norm of at most r per sample, and is split into the part
parallel to the conditional prediction D_c (which mostly rescales D_c: oversaturation) and the
orthogonal rest; the parallel part is weighted by eta. Here, per step and per sample (norms and
inner products over all dimensions but the batch):

    d     = eps_u - eps_n                          the NP direction (NP is eps_u + scale * d)
    m     = d + momentum * m_prev                  m_prev = 0 at the start; the state "momentum"
    m_r   = m * min(1, r / ||m||)                  only if r = norm_threshold > 0
    par   = (<m_r, eps_u> / <eps_u, eps_u>) eps_u  (0 where eps_u = 0)
    orth  = m_r - par
    eps   = eps_u + scale * (orth + eta * par)

The mapping: NP, eps_u - scale (eps_n - eps_u), is exactly CFG with the kept prediction eps_u in
the role of the conditional D_c, the negative eps_n in the role of the unconditional D_u, and
w - 1 = scale. So APG's update is d = eps_u - eps_n and its projection is taken relative to eps_u,
the prediction we keep and extrapolate from, as the paper projects relative to D_c. This is the
paper's Algorithm 1 with w = scale + 1, and diffusers' `normalized_guidance(pred_cond=eps_u,
pred_uncond=eps_n, guidance_scale=scale, use_original_formulation=True)`; diffusers' default
formulation adds w * update to pred_uncond instead, which differs from the paper unless eta = 1.

Reductions: with eta = 1, norm_threshold = 0 and momentum = 0 this is exactly NP (orth + par = d).
With eta = 0 only the orthogonal part acts, so on one-dimensional data (gmm1d), where every d is
parallel to eps_u, APG with eta = 0 applies no guidance at all.

Momentum: the buffer follows the paper and diffusers, m = d + beta m_prev (not an EMA); the paper
proposes a negative beta ("reverse momentum"), which subtracts part of the accumulated update so
guidance does not keep pushing in the same direction; |beta| < 1 keeps the buffer bounded. As with
every method here, outside the time window [t_low, t_high] the unguided prediction is used while
the buffer keeps accumulating (diffusers' guider instead skips the buffer update outside its range).

Defaults: eta = 0 (the paper's recommendation); momentum = 0, off, as in diffusers' guider
(`adaptive_projected_guidance_momentum=None`) and ComfyUI's APG node (0.0). The paper introduces reverse
(negative) momentum but we could not check a recommended value against its text; the -0.5 used here
before came from a usage example in another project (stable-diffusion.cpp's APG pull request; ACE-Step
uses -0.75), not from the paper, so the default follows the reference implementation the method is
pinned to. Reverse momentum stays a parameter (for example momentum=-0.5). norm_threshold = 15
(diffusers' guider default, the top of the paper's per-model range of about 2.5 to 15; the norm
grows with the data's dimension, so on the low-dimensional tasks it rarely bites); scale = 1.

Space: the paper applies APG to denoised predictions D = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
(so does ComfyUI); diffusers applies it to the model's raw output, eps for Stable Diffusion. This
method works on eps like diffusers: `guide` does not see x_t, which the denoised form needs. In D
space d would be scaled by -sqrt((1 - abar) / abar) per step (changing what r and the momentum mean)
and the projection base would be D_u rather than eps_u.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from negguide.methods.base import GuidanceMethod, Params, Predictions, State, constant, per_sample, scale_is_finite
from negguide.methods.schedule import Step


@dataclass(frozen=True)
class APGParams(Params):
    scale: float = 1.0  # w - 1 of the paper
    eta: float = 0.0  # weight of the part of the update parallel to eps_u
    norm_threshold: float = 15.0  # r: the update's per-sample L2 norm is capped at r; 0 turns it off
    momentum: float = 0.0  # beta of m = d + beta * m_prev; 0 (off) is diffusers' default, the paper's reverse momentum is < 0

    def validate(self) -> None:
        super().validate()
        if not scale_is_finite(self.eta):
            raise ValueError(f"eta must be a finite number, got {self.eta}")
        if not (scale_is_finite(self.norm_threshold) and self.norm_threshold >= 0.0):
            raise ValueError(f"norm_threshold must be a finite number >= 0 (0 turns it off), got {self.norm_threshold}")
        if not -1.0 < self.momentum < 1.0:
            raise ValueError(f"momentum must be in (-1, 1) for the buffer to stay bounded, got {self.momentum}")


class AdaptiveProjectedGuidance(GuidanceMethod):
    name = "apg"
    reference = ("Sadat et al. 2024 (ICLR 2025), arXiv:2410.02416, Algorithm 1; "
                 "code: huggingface/diffusers src/diffusers/guiders/adaptive_projected_guidance.py")
    summary = "Adaptive Projected Guidance used negatively: NP's update with momentum, a norm cap, its part along eps_u down-weighted"
    Params = APGParams

    def init_state(self, batch: int, like: torch.Tensor) -> State:
        return {"momentum": torch.zeros_like(like), "guidance_scale": constant(batch, self.params.scale, like)}

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        p = self.params
        eps_u, eps_n = preds["uncond"], preds["neg"]
        running = (eps_u - eps_n) + p.momentum * state["momentum"]
        update = running
        if p.norm_threshold > 0.0:
            norm = per_sample(running.flatten(1).norm(dim=1), running)
            update = running * torch.clamp(p.norm_threshold / norm, max=1.0)  # norm 0 gives inf, clamped to 1
        base = eps_u.flatten(1)
        base_sq = (base * base).sum(1)
        coef = torch.where(base_sq > 0, (update.flatten(1) * base).sum(1) / base_sq, torch.zeros_like(base_sq))
        parallel = per_sample(coef, eps_u) * eps_u
        orthogonal = update - parallel
        eps = eps_u + p.scale * (orthogonal + p.eta * parallel)
        return eps, {"momentum": running, "guidance_scale": constant(len(eps_u), p.scale, eps_u)}
