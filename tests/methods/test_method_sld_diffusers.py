"""`sld-sd` against diffusers' StableDiffusionPipelineSafe denoising loop, transcribed here.

diffusers (pipelines/deprecated/stable_diffusion_safe), per step i, with
noise_pred_uncond = eps(empty prompt) [our `null`], noise_pred_text = eps(prompt) [our `uncond`],
noise_pred_safety_concept = eps(safety concept) [our `neg`]:

    enable_safety_guidance = sld_guidance_scale > 1.0 and guidance_scale > 1.0
    noise_guidance = text - uncond
    scale  = clamp(|text - safety| * sld_guidance_scale, max=1)
    scale  = 0 where text - safety >= sld_threshold                                     (Eq. 6)
    ngs    = (safety - uncond) * scale + sld_momentum_scale * momentum                    (Eq. 4, 7)
    momentum = sld_mom_beta * momentum + (1 - sld_mom_beta) * ngs                         (Eq. 8)
    if i >= sld_warmup_steps: noise_guidance -= ngs                                       (Eq. 3)
    noise_pred = uncond + guidance_scale * noise_guidance

The harness applies positive CFG around the method's output (null + w (eps - null)), so that is what
is compared with diffusers' noise_pred. The presets are diffusers' SafetyConfig, copied here by value.
"""
from __future__ import annotations

import pytest
import torch

from negguide.methods import Schedule, load_method
from negguide.methods.base import guide, init_state, observe

CHAIN = Schedule().steps(50)
TOL = {"rtol": 1e-12, "atol": 1e-12}

# diffusers.pipelines.deprecated.stable_diffusion_safe.SafetyConfig (diffusers 0.42), by value.
SAFETY_CONFIG = {
    "weak": {"sld_warmup_steps": 15, "sld_guidance_scale": 20, "sld_threshold": 0.0, "sld_momentum_scale": 0.0, "sld_mom_beta": 0.0},
    "medium": {"sld_warmup_steps": 10, "sld_guidance_scale": 1000, "sld_threshold": 0.01, "sld_momentum_scale": 0.3, "sld_mom_beta": 0.4},
    "strong": {"sld_warmup_steps": 7, "sld_guidance_scale": 2000, "sld_threshold": 0.025, "sld_momentum_scale": 0.5, "sld_mom_beta": 0.7},
    "max": {"sld_warmup_steps": 0, "sld_guidance_scale": 5000, "sld_threshold": 1.0, "sld_momentum_scale": 0.5, "sld_mom_beta": 0.7},
}


def _randn(gen: torch.Generator, shape) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def t2i_preds(gen: torch.Generator, shape, threshold: float, sld_guidance_scale: float) -> dict[str, torch.Tensor]:
    """eps_p (`uncond`), eps_s (`neg`), eps_null (`null`) with text - safety covering every mask branch,
    including elements exactly on the threshold (diffusers zeroes them: '>=')."""
    n = torch.Size(shape).numel()
    text = _randn(gen, (n,))
    kind = torch.randint(0, 3, (n,), generator=gen)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    ramp = 1.0 / sld_guidance_scale
    gap = torch.where(kind == 0, 2.0 * _randn(gen, (n,)),
                      torch.where(kind == 1, (2.0 * u - 1.0) * ramp, threshold + (2.0 * u - 1.0) * 2 * ramp))
    safety = text - gap
    on = torch.arange(n) % 5 == 2
    text, safety = torch.where(on, threshold, text), torch.where(on, 0.0, safety)
    assert torch.any((text - safety) == threshold)
    return {"uncond": text.reshape(shape), "neg": safety.reshape(shape), "null": _randn(gen, shape)}


class DiffusersLoop:
    """The SLD part of StableDiffusionPipelineSafe.__call__, one call per denoising step."""

    def __init__(self, guidance_scale, sld_guidance_scale, sld_warmup_steps, sld_threshold, sld_momentum_scale, sld_mom_beta):
        self.guidance_scale = guidance_scale
        self.sld_guidance_scale, self.sld_warmup_steps, self.sld_threshold = sld_guidance_scale, sld_warmup_steps, sld_threshold
        self.sld_momentum_scale, self.sld_mom_beta = sld_momentum_scale, sld_mom_beta
        self.enable_safety_guidance = sld_guidance_scale > 1.0 and guidance_scale > 1.0
        self.safety_momentum = None

    def __call__(self, i, noise_pred_uncond, noise_pred_text, noise_pred_safety_concept):
        noise_guidance = noise_pred_text - noise_pred_uncond
        if self.enable_safety_guidance:
            if self.safety_momentum is None:
                self.safety_momentum = torch.zeros_like(noise_guidance)
            scale = torch.clamp(torch.abs(noise_pred_text - noise_pred_safety_concept) * self.sld_guidance_scale, max=1.0)
            safety_concept_scale = torch.where((noise_pred_text - noise_pred_safety_concept) >= self.sld_threshold, torch.zeros_like(scale), scale)
            noise_guidance_safety = (noise_pred_safety_concept - noise_pred_uncond) * safety_concept_scale
            noise_guidance_safety = noise_guidance_safety + self.sld_momentum_scale * self.safety_momentum
            self.safety_momentum = self.sld_mom_beta * self.safety_momentum + (1 - self.sld_mom_beta) * noise_guidance_safety
            self.last_safety = noise_guidance_safety  # kept for the scale != 1 test
            if i >= self.sld_warmup_steps:
                noise_guidance = noise_guidance - noise_guidance_safety
        return noise_pred_uncond + self.guidance_scale * noise_guidance


def cfg(eps: torch.Tensor, preds: dict[str, torch.Tensor], w: float) -> torch.Tensor:
    """The harness's positive CFG around the method's output (bench.tasks.paired finalize)."""
    return preds["null"] + w * (eps - preds["null"])


def run_against_diffusers(method, config: dict, shape, steps: int, w: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    loop = DiffusersLoop(w, **config)
    state = init_state(method, shape[0], _randn(gen, shape))
    guided_steps = 0
    for step in CHAIN[:steps]:
        preds = t2i_preds(gen, shape, config["sld_threshold"], max(config["sld_guidance_scale"], 2.0))
        eps, state = guide(method, step, preds, state)
        want = loop(step.index, preds["null"], preds["uncond"], preds["neg"])
        torch.testing.assert_close(cfg(eps, preds, w), want, **TOL)
        if loop.safety_momentum is not None:
            torch.testing.assert_close(state["momentum"], loop.safety_momentum, **TOL)
        else:
            assert torch.equal(state["momentum"], torch.zeros(shape, dtype=torch.float64))
        if step.index < config["sld_warmup_steps"] or not loop.enable_safety_guidance:
            assert torch.equal(eps, preds["uncond"])
            assert torch.equal(state["guidance_scale"], torch.zeros(shape[0], dtype=torch.float64))
        else:
            guided_steps += 1
        state = observe(method, step, preds["uncond"], preds["uncond"], preds, state)
    return guided_steps


@pytest.mark.parametrize("shape", [(2, 1, 4, 4), (4, 2)])
@pytest.mark.parametrize("preset", list(SAFETY_CONFIG))
def test_presets_match_diffusers_loop(preset, shape):
    """20 steps: past every preset's warm-up (weak: 15), momentum built up during warm-up."""
    method = load_method("sld-sd", {"preset": preset})
    guided = run_against_diffusers(method, SAFETY_CONFIG[preset], shape, steps=20, w=7.5, seed=31)
    assert guided == 20 - SAFETY_CONFIG[preset]["sld_warmup_steps"]


@pytest.mark.parametrize("preset", list(SAFETY_CONFIG))
def test_preset_values_are_diffusers_safety_config(preset):
    config = load_method("sld-sd", {"preset": preset}).config()["params"]
    want = SAFETY_CONFIG[preset]
    assert (config["s_s"], config["warmup"], config["threshold"], config["s_m"], config["beta_m"]) == (
        want["sld_guidance_scale"], want["sld_warmup_steps"], want["sld_threshold"], want["sld_momentum_scale"], want["sld_mom_beta"])


def test_default_is_medium_which_is_the_pipeline_default():
    assert load_method("sld-sd", {}).params.effective() == load_method("sld-sd", {"preset": "medium"}).params.effective()


@pytest.mark.parametrize("s_s", [0.5, 1.0, 1.5])
def test_custom_values_and_safety_off_at_or_below_one(s_s):
    """diffusers enables SLD only for sld_guidance_scale > 1 (1.0 itself is off)."""
    config = {"sld_warmup_steps": 2, "sld_guidance_scale": s_s, "sld_threshold": 0.3, "sld_momentum_scale": 0.4, "sld_mom_beta": 0.25}
    method = load_method("sld-sd", {"preset": "custom", "s_s": s_s, "warmup": 2, "threshold": 0.3, "s_m": 0.4, "beta_m": 0.25})
    guided = run_against_diffusers(method, config, (3, 1, 4, 4), steps=6, w=5.0, seed=32)
    assert guided == (4 if s_s > 1.0 else 0)


def test_scale_multiplies_only_the_applied_safety_term():
    """scale != 1 (the harness's extension): eps = eps_p - scale * safety; the momentum is scale-free."""
    gen = torch.Generator().manual_seed(33)
    v = SAFETY_CONFIG["strong"]
    shape = (3, 2)
    method = load_method("sld-sd", {"preset": "strong", "scale": 0.4})
    loop = DiffusersLoop(1.0 + 1e-9, **v)  # any w > 1 enables it; the momentum does not depend on w
    state = init_state(method, shape[0], _randn(gen, shape))
    for step in CHAIN[:10]:
        preds = t2i_preds(gen, shape, v["sld_threshold"], v["sld_guidance_scale"])
        eps, state = guide(method, step, preds, state)
        loop(step.index, preds["null"], preds["uncond"], preds["neg"])
        applied = 0.4 if step.index >= v["sld_warmup_steps"] else 0.0
        torch.testing.assert_close(eps, preds["uncond"] - applied * loop.last_safety, **TOL)
        torch.testing.assert_close(state["momentum"], loop.safety_momentum, **TOL)
        state = observe(method, step, preds["uncond"], preds["uncond"], preds, state)


def test_window_keeps_momentum_evolving_outside():
    """Base window [t_low, t_high]: outside it eps_p is used, inside the diffusers update, momentum throughout."""
    gen = torch.Generator().manual_seed(34)
    v = SAFETY_CONFIG["max"]
    shape = (2, 1, 4, 4)
    method = load_method("sld-sd", {"preset": "max", "t_low": 897, "t_high": 958})  # steps 2..5
    loop = DiffusersLoop(3.0, **v)
    state = init_state(method, shape[0], _randn(gen, shape))
    for step in CHAIN[:8]:
        preds = t2i_preds(gen, shape, v["sld_threshold"], v["sld_guidance_scale"])
        eps, state = guide(method, step, preds, state)
        want = loop(step.index, preds["null"], preds["uncond"], preds["neg"])
        torch.testing.assert_close(state["momentum"], loop.safety_momentum, **TOL)
        if 897 <= step.t <= 958:
            torch.testing.assert_close(cfg(eps, preds, 3.0), want, **TOL)
        else:
            assert torch.equal(eps, preds["uncond"])
            assert torch.equal(state["guidance_scale"], torch.zeros(shape[0], dtype=torch.float64))
        state = observe(method, step, preds["uncond"], preds["uncond"], preds, state)


def test_a_preset_refuses_a_conflicting_field():
    from negguide.methods import BenchError

    with pytest.raises(BenchError, match="preset=medium fixes s_s"):
        load_method("sld-sd", {"preset": "medium", "s_s": 7.0})
