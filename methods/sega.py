"""Semantic Guidance (SEGA, Brack et al. 2023, NeurIPS) used in the reverse direction, as diffusers'
SemanticStableDiffusionPipeline computes it with one editing concept (our negative prompt).

diffusers (pipelines/deprecated/semantic_stable_diffusion, `__call__`), per step i, with
noise_pred_uncond = eps_base, the editing concept's prediction eps_e and reverse_editing_direction:

    edit     = -(eps_e - eps_base) * s_e                                  (reversed, times edit_guidance_scale)
    thr      = quantile(|edit|, threshold) per sample AND per channel, over the spatial positions
    edit     = edit where |edit| >= thr, else 0
    edit     = 0 from step `cooldown` on (edit_cooldown_steps; None = never)
    guidance = edit + s_m * mom
    mom     <- beta_m * mom + (1 - beta_m) * guidance                     (also during warm-up)
    noise_pred = eps_base + w (eps_text - eps_base) + guidance            (guidance from step `warmup` on)

Two variants, as `sld` / `sld-sd`, which differ only in the base the edit direction is measured from:

- `sega` (`needs = ("uncond", "neg")`, every task): eps_base = eps_u. On class-removal tasks this is
  diffusers exactly (no text prompt, so eps_text = eps_base and the CFG term vanishes):
      eps = eps_u + scale * guidance,   guidance = -mask * s_e * (eps_n - eps_u) + s_m * mom.
  On text-to-image tasks (uncond = eps_p) the direction is measured from the positive prompt,
  eps_n - eps_p, as NP and DNG measure it (the class-removal adaptation, like `sld`).
- `sega-sd` (`needs = ("uncond", "neg", "null")`, text-to-image tasks and gmm2d-prompts): eps_base =
  eps_null, as the pipeline does: guidance = -mask * s_e * (eps_n - eps_null) + s_m * mom and
  eps_method = eps_p + scale * guidance.

The task applies positive CFG around the method's output, eps_null + w (eps_method - eps_null) =
eps_null + w (eps_p - eps_null) + w * scale * guidance. diffusers adds SEGA's guidance *after* the CFG
product (unlike SLD, whose safety term sits inside it), so diffusers' numbers are scale = 1 / w: scale = 1
on class-removal tasks and gmm2d-prompts (w = 1), scale = 1/7.5 on the sd2 tasks. `scale` multiplies the
applied guidance, momentum included; the momentum state is kept in diffusers' units (scale-free). As
guidance is linear in the edit term, diffusers' edit_weights=[c] for the one concept is scale = max(c, 0).

The threshold mask: diffusers takes torch.quantile (linear interpolation) of |edit| flattened from dim 2,
i.e. per sample and channel over H x W of a [B, C, H, W] latent, and keeps elements at or above it
(so about 10 % of each channel at the default 0.9). Here the same on [B, C, *spatial]; a flat
[B, D] sample (the Gaussian-mixture tasks) is one channel of D positions, so on a 1-D task the mask keeps
everything and SEGA is NP with scale s_e plus momentum. One deliberate difference: diffusers computes the
quantile in float32 for every other dtype (torch.quantile has no half kernels); here only half types are
cast, float64 stays float64, because rounding a float64 threshold to float32 can drop the element that
defines it (on a 1-D task, about half the samples at random). For float32 and half inputs it is diffusers'
computation.

Defaults are diffusers' __call__ defaults: edit_guidance_scale 5, edit_threshold 0.9, edit_warmup_steps 10,
edit_cooldown_steps None (here -1), edit_momentum_scale 0.1, edit_mom_beta 0.4, with one change of unit.
diffusers counts the warm-up in inference steps, so its 10 of a 50-step run (20% of the chain) would be 1% of a
1,000-step chain. Here the warm-up is in training timesteps: guidance applies from the first step with
t < warmup_t, and warmup_t = 800 is diffusers' 10 of 50 on T = 1,000 (our 50-step chain: first guided step 10,
t = 795; diffusers' leading spacing: step 10, t = 781; 100 steps: step 20; 1,000 steps: step 200). The old
count stays reachable: `warmup` (sampling steps, default 0) applies as well, so warmup = 10, warmup_t = 1000 is
diffusers' literal loop on any chain. Cooldown counts sampling steps (step.index), as diffusers does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from negguide.methods.base import GuidanceMethod, Params, Predictions, State
from negguide.methods.schedule import Step

NEVER = -1  # cooldown value for diffusers' edit_cooldown_steps=None
WARMUP_T = 800  # diffusers' edit_warmup_steps=10 of 50 inference steps, as a training timestep of T = 1000 (20% of the chain)


@dataclass(frozen=True)
class SEGAParams(Params):
    scale: float = 1.0  # multiplies the applied guidance; 1 is diffusers where the task's CFG scale w is 1
    s_e: float = 5.0  # edit_guidance_scale
    threshold: float = 0.9  # edit_threshold: quantile of |edit| per sample and channel
    warmup: int = 0  # edit_warmup_steps in sampling steps (diffusers' unit): guidance from step.index >= warmup
    warmup_t: int = WARMUP_T  # and only at training timesteps t < warmup_t (momentum builds up meanwhile)
    cooldown: int = NEVER  # edit_cooldown_steps: edit term zero from this step on; -1 = never (None)
    s_m: float = 0.1  # edit_momentum_scale
    beta_m: float = 0.4  # edit_mom_beta

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a quantile and must be in [0, 1], got {self.threshold}")
        if not 0.0 <= self.beta_m < 1.0:
            raise ValueError(f"beta_m must be in [0, 1), got {self.beta_m}")
        if not (math.isfinite(self.s_e) and self.s_e >= 0):
            raise ValueError(f"s_e must be a finite number >= 0, got {self.s_e}")
        if not math.isfinite(self.s_m):
            raise ValueError(f"s_m must be a finite number, got {self.s_m}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.warmup_t < 0:
            raise ValueError(f"warmup_t is a training timestep and must be >= 0 (T = 1000 for no warm-up in timesteps), got {self.warmup_t}")
        if self.cooldown < NEVER:
            raise ValueError(f"cooldown must be >= 0, or -1 for never, got {self.cooldown}")


def quantile_mask(edit: torch.Tensor, q: float) -> torch.Tensor:
    """Elements whose |edit| is at or above the q-quantile of their (sample, channel), as a bool tensor."""
    batch = edit.shape[0]
    flat = edit.abs().reshape(batch, edit.shape[1], -1) if edit.dim() >= 3 else edit.abs().reshape(batch, 1, -1)
    exact = flat.dtype in (torch.float32, torch.float64)
    threshold = torch.quantile(flat if exact else flat.to(torch.float32), q, dim=2, keepdim=True).to(flat.dtype)
    return (flat >= threshold).reshape(edit.shape)


class SemanticGuidance(GuidanceMethod):
    name = "sega"
    reference = ("Brack et al. 2023 (NeurIPS), SEGA, arXiv:2301.12247, reverse direction; "
                 "code: diffusers SemanticStableDiffusionPipeline, edit direction measured from eps_u")
    summary = "SEGA, reverse direction: quantile-masked, momentum-accelerated repulsion, measured from eps_u"
    Params = SEGAParams
    base: ClassVar[str] = "uncond"  # the prediction the edit direction is measured from

    def init_state(self, batch: int, like: torch.Tensor) -> State:
        return {"momentum": torch.zeros_like(like)}

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        p = self.params
        eps_p, eps_n, eps_base = preds["uncond"], preds["neg"], preds[self.base]
        if p.cooldown != NEVER and step.index >= p.cooldown:
            edit = torch.zeros_like(eps_p)
            mask = torch.zeros_like(eps_p, dtype=torch.bool)
        else:
            edit = (eps_n - eps_base) * -1.0 * p.s_e  # reverse_editing_direction, then edit_guidance_scale
            mask = quantile_mask(edit, p.threshold)
            edit = torch.where(mask, edit, torch.zeros_like(edit))
        guidance = edit + p.s_m * state["momentum"]
        momentum = p.beta_m * state["momentum"] + (1.0 - p.beta_m) * guidance
        scale = p.scale if step.index >= p.warmup and step.t < p.warmup_t else 0.0
        # Traced scale: the NP-equivalent strength on the masked elements, averaged per sample.
        effective = scale * p.s_e * mask.flatten(1).to(eps_p.dtype).mean(1)
        return eps_p + scale * guidance, {"momentum": momentum, "guidance_scale": effective}


class DiffusersSemanticGuidance(SemanticGuidance):
    name = "sega-sd"
    reference = "Brack et al. 2023 (NeurIPS), SEGA, arXiv:2301.12247; code: diffusers SemanticStableDiffusionPipeline"
    summary = "SEGA as in diffusers' SemanticStableDiffusionPipeline: edit direction measured from the empty prompt"
    needs = ("uncond", "neg", "null")
    base = "null"
