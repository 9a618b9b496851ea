"""Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm: Transform 2D Diffusion
into 3D, alleviate Janus problem and Beyond"): remove only the part of the negative direction that is
perpendicular to the positive one.

Reference: github.com/Perp-Neg/Perp-Neg-stablediffusion, pipeline_perpneg_stable_diffusion.py
(`get_prependicualr_component`, `weighted_prependicualr_aggricator`), with one positive and one
negative prompt and noise_pred_uncond = eps_null (empty prompt):

    e_pos      = eps_p - eps_null,   e_neg = eps_n - eps_null
    e_neg_perp = e_neg - (<e_neg, e_pos> / ||e_pos||^2) e_pos        (per sample, over all elements)
    noise_pred = eps_null + w (e_pos - w_neg e_neg_perp)              (w_neg = |negative prompt weight|)

i.e. the paper's eps_null + w_pos e_pos - w_neg' e_neg_perp with w_pos = w and w_neg' = w * w_neg. Here,
with `uncond` = eps_p, `neg` = eps_n, `null` = eps_null, the method returns

    eps_method = eps_p - scale * e_neg_perp

and the task's positive CFG, eps_null + w (eps_method - eps_null), turns it into the reference's
noise_pred with w_neg = scale (the reference README's example weights "1|-1.5" are scale = 1.5; the
default here is 1, as NP's). Where ||e_pos|| = 0 nothing is projected out (e_neg_perp = e_neg); the
reference divides by zero there.

Class-removal tasks have no empty prompt: the positive model is the unconditional one, so eps_null :=
eps_u there, e_pos vanishes, the guard keeps the whole negative direction and Perp-Neg is NP,
eps_u - scale (eps_n - eps_u). Those tasks do not provide `null`, so they refuse this method (use `np`).
"""
from __future__ import annotations

import torch

from negguide.methods.base import GuidanceMethod, Predictions, State, constant, per_sample
from negguide.methods.schedule import Step


def perpendicular(e_neg: torch.Tensor, e_pos: torch.Tensor) -> torch.Tensor:
    """e_neg minus its projection on e_pos, per sample; e_neg itself where e_pos is zero."""
    dot = (e_neg * e_pos).flatten(1).sum(1)
    norm2 = (e_pos * e_pos).flatten(1).sum(1)
    coefficient = torch.where(norm2 > 0, dot / torch.where(norm2 > 0, norm2, torch.ones_like(norm2)), torch.zeros_like(dot))
    return e_neg - per_sample(coefficient, e_pos) * e_pos


class PerpNegGuidance(GuidanceMethod):
    name = "perp-neg"
    reference = ("Armandpour et al. 2023, arXiv:2304.04968; code: github.com/Perp-Neg/Perp-Neg-stablediffusion "
                 "(pipeline_perpneg_stable_diffusion.py)")
    summary = "Perp-Neg: repel only the part of the negative direction perpendicular to the positive one"
    needs = ("uncond", "neg", "null")

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        eps_p, eps_n, eps_null = preds["uncond"], preds["neg"], preds["null"]
        e_neg_perp = perpendicular(eps_n - eps_null, eps_p - eps_null)
        return eps_p - self.params.scale * e_neg_perp, {"guidance_scale": constant(len(eps_p), self.params.scale, eps_p)}
