"""Safe Latent Diffusion as diffusers' StableDiffusionPipelineSafe computes it (Schramowski et al. 2023).

Under the text-to-image convention `uncond` = eps_p (positive prompt), `neg` = eps_s (the safety
concept, our negative prompt) and `null` = eps_null (empty prompt):

    d      = eps_p - eps_s
    mask   = 0 where d >= threshold, else min(s_s |d|, 1)            (element-wise)
    safety = mask (eps_s - eps_null) + s_m mom
    mom   <- beta_m mom + (1 - beta_m) safety                       (also during warm-up)
    eps    = eps_p - scale safety   from step `warmup` on, else eps_p

The runtime's positive CFG then gives eps_null + w (eps_p - eps_null - scale safety), which is
diffusers' update for scale = 1. Unlike `sld` (the DNG paper's class-removal adaptation), the
safety direction is measured from the empty prompt, not from eps_p. diffusers turns the safety
term off when s_s <= 1; so does this method.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from negguide.methods.base import GuidanceMethod, Params, Predictions, State
from negguide.methods.schedule import Step

FIELDS = ("s_s", "warmup", "threshold", "s_m", "beta_m")
# diffusers' SafetyConfig, renamed: sld_guidance_scale -> s_s, sld_warmup_steps -> warmup,
# sld_threshold -> threshold, sld_momentum_scale -> s_m, sld_mom_beta -> beta_m.
PRESETS: dict[str, dict[str, float]] = {
    "weak": {"s_s": 20.0, "warmup": 15, "threshold": 0.0, "s_m": 0.0, "beta_m": 0.0},
    "medium": {"s_s": 1000.0, "warmup": 10, "threshold": 0.01, "s_m": 0.3, "beta_m": 0.4},
    "strong": {"s_s": 2000.0, "warmup": 7, "threshold": 0.025, "s_m": 0.5, "beta_m": 0.7},
    "max": {"s_s": 5000.0, "warmup": 0, "threshold": 1.0, "s_m": 0.5, "beta_m": 0.7},
}
CUSTOM = "custom"


@dataclass(frozen=True)
class DiffusersSLDParams(Params):
    scale: float = 1.0  # multiplies the safety term; 1 is diffusers' pipeline
    preset: str = "medium"  # weak | medium | strong | max, or custom to use the fields below
    s_s: float = 1000.0  # sld_guidance_scale: mask strength per unit of |eps_p - eps_s|
    warmup: int = 10  # sld_warmup_steps: steps before the safety term is applied
    threshold: float = 0.01  # sld_threshold
    s_m: float = 0.3  # sld_momentum_scale
    beta_m: float = 0.4  # sld_mom_beta

    def validate(self) -> None:
        super().validate()
        if self.preset != CUSTOM and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join([*PRESETS, CUSTOM])}, got {self.preset!r}")
        if self.preset != CUSTOM:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            clashes = [k for k in FIELDS if getattr(self, k) not in (defaults[k], PRESETS[self.preset][k])]
            if clashes:
                raise ValueError(f"preset={self.preset} fixes {', '.join(clashes)}; pass preset=custom to set them yourself")
        values = self.effective()
        if not 0.0 <= values["beta_m"] < 1.0:
            raise ValueError(f"beta_m must be in [0, 1), got {values['beta_m']}")
        if values["s_s"] < 0 or values["warmup"] < 0:
            raise ValueError("s_s and warmup must be >= 0")

    def effective(self) -> dict[str, float]:
        """The values in force: the preset's, or the fields when preset=custom."""
        if self.preset == CUSTOM:
            return {k: getattr(self, k) for k in FIELDS}
        return dict(PRESETS[self.preset])


class DiffusersSLD(GuidanceMethod):
    name = "sld-sd"
    reference = "Schramowski et al. 2023; code: diffusers StableDiffusionPipelineSafe"
    summary = "Safe Latent Diffusion as in diffusers' StableDiffusionPipelineSafe (presets weak/medium/strong/max)"
    needs = ("uncond", "neg", "null")
    Params = DiffusersSLDParams

    def init_state(self, batch: int, like: torch.Tensor) -> State:
        return {"momentum": torch.zeros_like(like)}

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        v = self.params.effective()
        eps_p, eps_s, eps_null = preds["uncond"], preds["neg"], preds["null"]
        if v["s_s"] <= 1.0:  # diffusers: enable_safety_guidance = sld_guidance_scale > 1
            zero = torch.zeros(len(eps_p), dtype=eps_p.dtype, device=eps_p.device)
            return eps_p, {"momentum": state["momentum"], "guidance_scale": zero}
        diff = eps_p - eps_s
        strength = torch.clamp(diff.abs() * v["s_s"], max=1.0)
        mask = torch.where(diff >= v["threshold"], torch.zeros_like(strength), strength)
        safety = mask * (eps_s - eps_null) + v["s_m"] * state["momentum"]
        momentum = v["beta_m"] * state["momentum"] + (1.0 - v["beta_m"]) * safety
        scale = self.params.scale if step.index >= v["warmup"] else 0.0
        # Traced scale: the mask's mean strength times the scale, per sample (as `sld` does).
        effective = scale * mask.flatten(1).mean(1)
        return eps_p - scale * safety, {"momentum": momentum, "guidance_scale": effective}

    def config(self) -> dict[str, Any]:
        """Parameters with the preset's values written out, so a stored run says what was applied."""
        return {"method": self.name, "params": {**super().config()["params"], **self.params.effective()}}
