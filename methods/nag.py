"""Normalized Attention Guidance (NAG, Chen et al. 2025, "Normalized Attention Guidance: Universal Negative
Guidance for Diffusion Models", arXiv:2505.21179): negative guidance inside the cross-attention layers,
not on noise predictions.

In every cross-attention layer the image queries Q attend once to the positive prompt's keys and values
and once to the negative prompt's, Z+ = Attn(Q, K+, V+), Z- = Attn(Q, K-, V-) ([B, tokens, channels],
heads merged, before the output projection). Per token (the L1 norm runs over the channels):

    Z~ = Z+ + scale (Z+ - Z-)                        extrapolation away from the negative prompt
    r  = ||Z~||_1 / ||Z+||_1
    Z^ = Z~ min(r, tau) / r                          L1 normalization: ||Z^||_1 <= tau ||Z+||_1
    Z  = alpha Z^ + (1 - alpha) Z+                   refinement (alpha-blending)

and Z goes on through the layer's output projection. Reference code: github.com/ChenDarYen/
Normalized-Attention-Guidance, NAGAttnProcessor2_0 (attention_nag.py) and NAGStableDiffusionXLPipeline
(pipeline_sdxl_nag.py), which write the extrapolation as nag_scale Z+ - (nag_scale - 1) Z-, so
nag_scale = scale + 1 (nag_scale 1, i.e. scale 0, switches NAG off there). Defaults are the paper's SDXL
setting, scale 2, tau 2.5, alpha 0.5 (as quoted in ChenDarYen/ComfyUI-NAG issue #10, where the author
confirms that the paper's 2 is the code's nag_scale 3); tau 2.5 and alpha 0.5 are also the SDXL
pipeline's defaults. The reference divides by ||Z+||_1 unguarded; here a token with Z+ = 0 keeps
Z = Z+ = 0 (the bound above).

As in the reference SDXL pipeline, NAG acts only on the positive branch and combines with CFG: the
task's positive CFG takes the empty prompt's prediction unchanged, eps = eps_null + w (eps_nag - eps_null),
with eps_nag the positive prompt's prediction computed with NAG in every cross-attention layer (attn2)
against the negative prompt. That prediction is the `nag` the method needs; only tasks whose runtime can
hook cross-attention layers provide it (the Stable Diffusion tasks), so every other task refuses the
method before sampling. The time window plays the reference's nag_end (NAG only while
t >= floor((1 - nag_end) 999), i.e. t_low = that bound): outside it the sampler takes the plain
positive prediction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from typing import Protocol, runtime_checkable

from negguide.methods.base import GuidanceMethod, Params, Predictions, State, constant
from negguide.methods.errors import MethodError
from negguide.methods.schedule import Step

PREDICTION = "nag"  # eps of the positive prompt with NAG in its cross-attention layers


@dataclass(frozen=True)
class NAGParams(Params):
    scale: float = 2.0  # the paper's scale (phi); the reference code's nag_scale is scale + 1
    tau: float = 2.5  # bound on ||Z^||_1 / ||Z+||_1
    alpha: float = 0.5  # weight of the normalized feature against Z+

    def validate(self) -> None:
        super().validate()
        if not (math.isfinite(self.tau) and self.tau >= 1.0):
            raise ValueError(f"tau must be a finite number >= 1 (below 1 the bound shrinks Z+ itself), got {self.tau}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha blends Z^ with Z+ and must be in [0, 1], got {self.alpha}")


def normalized_attention(z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, tau: float, alpha: float) -> torch.Tensor:
    """NAG of attention outputs [..., tokens, channels]; the L1 norms are per token, over the last axis."""
    z_tilde = z_pos + scale * (z_pos - z_neg)
    norm_pos = z_pos.abs().sum(-1, keepdim=True)
    norm_tilde = z_tilde.abs().sum(-1, keepdim=True)
    # min(r, tau) / r is 1 where r <= tau, else tau / r; written so that nothing divides by zero.
    clipped = norm_tilde > tau * norm_pos
    safe_tilde = torch.where(clipped, norm_tilde, torch.ones_like(norm_tilde))
    factor = torch.where(clipped, tau * norm_pos / safe_tilde, torch.ones_like(norm_tilde))
    return alpha * (z_tilde * factor) + (1.0 - alpha) * z_pos


@runtime_checkable
class AttentionGuided(Protocol):
    """A denoiser that can run NAG inside its cross-attention layers (the Stable Diffusion tasks')."""

    def guide_attention(self, params: NAGParams | None) -> None:
        """Use `params` for the `nag` prediction until called with None."""


class NormalizedAttentionGuidance(GuidanceMethod):
    name = "nag"
    reference = ("Chen et al. 2025, Normalized Attention Guidance, arXiv:2505.21179; code: "
                 "github.com/ChenDarYen/Normalized-Attention-Guidance (attention_nag.py, pipeline_sdxl_nag.py)")
    summary = "NAG: extrapolate cross-attention outputs away from the negative prompt, L1-clip per token, blend (text-to-image tasks)"
    needs = ("uncond", PREDICTION)
    Params = NAGParams

    def prepare_models(self, denoiser: object) -> None:
        if not isinstance(denoiser, AttentionGuided):
            raise MethodError(f"method {self.name!r} acts inside cross-attention layers, and this task's denoiser has none to hook")
        denoiser.guide_attention(self.params)

    def cleanup_models(self, denoiser: object) -> None:
        if isinstance(denoiser, AttentionGuided):
            denoiser.guide_attention(None)

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        eps = preds[PREDICTION]
        return eps, {"guidance_scale": constant(len(eps), self.params.scale, eps)}
