"""`sega` / `sega-sd` against diffusers' SemanticStableDiffusionPipeline denoising loop, transcribed here.

diffusers (pipelines/deprecated/semantic_stable_diffusion, __call__), per step i, for one editing concept
with reverse_editing_direction=True and edit_weights=None, noise_pred_uncond = eps(empty prompt),
noise_pred_text = eps(prompt), noise_pred_edit = eps(editing concept):

    noise_guidance = guidance_scale * (text - uncond)
    cooldown = i + 1 if edit_cooldown_steps is None else edit_cooldown_steps
    if i >= cooldown: edit = 0
    else:
        edit = (edit_concept - uncond) * -1 * edit_guidance_scale
        tmp  = quantile(|edit|.flatten(start_dim=2), edit_threshold, dim=2)     (float32 unless float32)
        edit = where(|edit| >= tmp[:, :, None, None], edit, 0)
    edit = einsum("cb,cbijk->bijk", weights (1.0), edit) + edit_momentum_scale * momentum
    momentum = edit_mom_beta * momentum + (1 - edit_mom_beta) * edit
    if i >= edit_warmup_steps: noise_guidance += edit
    noise_pred = uncond + noise_guidance

Mappings pinned here: `sega` on class removal is that loop with uncond = text = our `uncond` and the
concept = `neg`; `sega-sd` is that loop with uncond = `null`, text = `uncond`, concept = `neg`, after the
harness's CFG with w and scale = 1/w.
"""
from __future__ import annotations

import ast
import importlib.util
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from negguide.methods.base import WINDOW_DEFAULTS
from negguide.methods.negative_prompting import NegativePrompting
from negguide.methods.schedule import Schedule
from negguide.methods.sega import DiffusersSemanticGuidance, SemanticGuidance, quantile_mask
from negguide.methods.base import guide, init_state, observe

CHAIN = Schedule().steps(50)
TOL = {"rtol": 1e-12, "atol": 1e-12}

# diffusers 0.42 SemanticStableDiffusionPipeline.__call__ defaults, by value.
DIFFUSERS_DEFAULTS = {"edit_guidance_scale": 5, "edit_warmup_steps": 10, "edit_cooldown_steps": None,
                      "edit_threshold": 0.9, "edit_momentum_scale": 0.1, "edit_mom_beta": 0.4}


def _randn(gen: torch.Generator, shape, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


class DiffusersLoop:
    """The SEGA part of SemanticStableDiffusionPipeline.__call__ for one reversed concept, one call per step."""

    def __init__(self, guidance_scale, edit_guidance_scale, edit_warmup_steps, edit_cooldown_steps, edit_threshold,
                 edit_momentum_scale, edit_mom_beta, quantile_in_float32=True):
        self.guidance_scale = guidance_scale
        self.edit_guidance_scale, self.edit_warmup_steps, self.edit_cooldown_steps = edit_guidance_scale, edit_warmup_steps, edit_cooldown_steps
        self.edit_threshold, self.edit_momentum_scale, self.edit_mom_beta = edit_threshold, edit_momentum_scale, edit_mom_beta
        self.quantile_in_float32 = quantile_in_float32  # False: the float32 branch applied to float64 (see module doc)
        self.edit_momentum = None

    def __call__(self, i, noise_pred_uncond, noise_pred_text, noise_pred_edit_concept):
        noise_guidance = self.guidance_scale * (noise_pred_text - noise_pred_uncond)
        if self.edit_momentum is None:
            self.edit_momentum = torch.zeros_like(noise_guidance)
        cooldown = i + 1 if self.edit_cooldown_steps is None else self.edit_cooldown_steps
        noise_guidance_edit = torch.zeros((1, *noise_guidance.shape), dtype=noise_guidance.dtype)
        concept_weights = torch.zeros((1, noise_guidance.shape[0]), dtype=noise_guidance.dtype)
        warmed = i >= self.edit_warmup_steps
        if i < cooldown:
            tmp_edit = noise_pred_edit_concept - noise_pred_uncond
            concept_weights[0, :] = 1.0
            tmp_edit = tmp_edit * -1
            tmp_edit = tmp_edit * self.edit_guidance_scale
            if tmp_edit.dtype == torch.float32 or not self.quantile_in_float32:
                tmp = torch.quantile(torch.abs(tmp_edit).flatten(start_dim=2), self.edit_threshold, dim=2, keepdim=False)
            else:
                tmp = torch.quantile(torch.abs(tmp_edit).flatten(start_dim=2).to(torch.float32), self.edit_threshold,
                                     dim=2, keepdim=False).to(tmp_edit.dtype)
            tmp_edit = torch.where(torch.abs(tmp_edit) >= tmp[:, :, None, None], tmp_edit, torch.zeros_like(tmp_edit))
            noise_guidance_edit[0] = tmp_edit
        concept_weights = torch.nan_to_num(torch.where(concept_weights < 0, torch.zeros_like(concept_weights), concept_weights))
        noise_guidance_edit = torch.einsum("cb,cbijk->bijk", concept_weights, noise_guidance_edit)
        noise_guidance_edit = noise_guidance_edit + self.edit_momentum_scale * self.edit_momentum
        self.edit_momentum = self.edit_mom_beta * self.edit_momentum + (1 - self.edit_mom_beta) * noise_guidance_edit
        self.last_guidance = noise_guidance_edit
        if warmed:
            noise_guidance = noise_guidance + noise_guidance_edit
        return noise_pred_uncond + noise_guidance


LITERAL = {"warmup_t": 1000}  # no warm-up in training timesteps: diffusers' warm-up counted in steps, literally


def params_for(config: dict, **extra) -> SemanticGuidance.Params:
    """diffusers' arguments as params, the warm-up counted in sampling steps as diffusers counts it."""
    cooldown = config["edit_cooldown_steps"]
    return SemanticGuidance.Params(s_e=float(config["edit_guidance_scale"]), threshold=config["edit_threshold"], warmup=config["edit_warmup_steps"],
                                   warmup_t=1000,
                                   cooldown=-1 if cooldown is None else cooldown, s_m=config["edit_momentum_scale"],
                                   beta_m=config["edit_mom_beta"], **extra)


CUSTOM = {"edit_guidance_scale": 2.5, "edit_warmup_steps": 3, "edit_cooldown_steps": 9, "edit_threshold": 0.6,
          "edit_momentum_scale": 0.3, "edit_mom_beta": 0.6}


def run_class_removal(method, config, shape, steps, seed, dtype=torch.float64, tol=TOL, float32_quantile=True):
    gen = torch.Generator().manual_seed(seed)
    loop = DiffusersLoop(7.5, **config, quantile_in_float32=float32_quantile)
    state = init_state(method, shape[0], _randn(gen, shape, dtype))
    guided = 0
    for step in CHAIN[:steps]:
        preds = {"uncond": _randn(gen, shape, dtype), "neg": _randn(gen, shape, dtype)}
        eps, state = guide(method, step, preds, state)
        want = loop(step.index, preds["uncond"], preds["uncond"], preds["neg"])  # no text prompt: text = uncond
        torch.testing.assert_close(eps, want, **tol)
        torch.testing.assert_close(state["momentum"], loop.edit_momentum, **tol)
        if step.index < config["edit_warmup_steps"]:
            assert torch.equal(eps, preds["uncond"]) and torch.all(state["guidance_scale"] == 0)
        else:
            guided += 1
        state = observe(method, step, preds["uncond"], preds["uncond"], preds, state)
    return guided


@pytest.mark.parametrize("shape", [(2, 1, 4, 4), (3, 2, 5, 6)])
@pytest.mark.parametrize("config", [DIFFUSERS_DEFAULTS, CUSTOM], ids=["defaults", "custom-cooldown"])
def test_sega_is_diffusers_loop_on_class_removal(config, shape):
    """20 steps: past the warm-up, momentum built up during it; the custom one also cools down at step 9."""
    method = SemanticGuidance(params_for(config))
    guided = run_class_removal(method, config, shape, steps=20, seed=41, float32_quantile=False)
    assert guided == 20 - config["edit_warmup_steps"]


def test_sega_float32_is_diffusers_literally():
    """In float32 diffusers takes the quantile as is: the literal loop, bit for bit."""
    method = SemanticGuidance(params_for(CUSTOM))
    run_class_removal(method, CUSTOM, (2, 4, 8, 8), steps=12, seed=42, dtype=torch.float32, tol={"rtol": 0, "atol": 0})


def test_sega_half_precision_takes_the_quantile_in_float32_like_diffusers():
    config = {**DIFFUSERS_DEFAULTS, "edit_warmup_steps": 0}
    method = SemanticGuidance(params_for(config))
    run_class_removal(method, config, (2, 4, 8, 8), steps=3, seed=43,
                      dtype=torch.bfloat16, tol={"rtol": 0, "atol": 0})


@pytest.mark.parametrize("w", [1.0, 7.5])
@pytest.mark.parametrize("config", [DIFFUSERS_DEFAULTS, CUSTOM], ids=["defaults", "custom-cooldown"])
def test_sega_sd_is_diffusers_pipeline_after_the_task_cfg(config, w):
    """eps_null + w (eps_method - eps_null) with scale = 1/w is diffusers' noise_pred (SEGA is added after CFG)."""
    gen = torch.Generator().manual_seed(44)
    shape = (2, 4, 5, 5)
    method = DiffusersSemanticGuidance(params_for(config, scale=1.0 / w))
    loop = DiffusersLoop(w, **config, quantile_in_float32=False)
    state = init_state(method, shape[0], _randn(gen, shape))
    for step in CHAIN[:20]:
        preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape), "null": _randn(gen, shape)}
        eps, state = guide(method, step, preds, state)
        want = loop(step.index, preds["null"], preds["uncond"], preds["neg"])
        torch.testing.assert_close(preds["null"] + w * (eps - preds["null"]), want, **TOL)
        torch.testing.assert_close(state["momentum"], loop.edit_momentum, **TOL)
        state = observe(method, step, preds["uncond"], preds["uncond"], preds, state)


def test_sega_and_sega_sd_differ_only_in_the_base():
    gen = torch.Generator().manual_seed(45)
    shape = (3, 1, 4, 4)
    preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape), "null": _randn(gen, shape)}
    params = SemanticGuidance.Params(**LITERAL)
    a, b = SemanticGuidance(params), DiffusersSemanticGuidance(params)
    assert a.needs == ("uncond", "neg") and b.needs == ("uncond", "neg", "null")
    assert (a.name, b.name) == ("sega", "sega-sd") and "2301.12247" in a.reference and "2301.12247" in b.reference
    eps_a, _ = guide(a, CHAIN[0], preds, init_state(a, 3, preds["uncond"]))
    eps_b, _ = guide(b, CHAIN[0], preds, init_state(b, 3, preds["uncond"]))
    assert not torch.allclose(eps_a, eps_b)
    eps_b2, _ = guide(b, CHAIN[0], {**preds, "null": preds["uncond"]}, init_state(b, 3, preds["uncond"]))
    assert torch.equal(eps_a, eps_b2)


def test_mask_is_a_quantile_per_sample_and_channel():
    """16 distinct |values| per (sample, channel) at q = 0.9: rank 13.5 -> exactly the top 2 of each channel,
    although channel 1 is 100x smaller than channel 0 (a per-sample quantile would keep none of it)."""
    gen = torch.Generator().manual_seed(46)
    base = torch.randperm(16, generator=gen).to(torch.float64) + 1.0
    edit = torch.stack([torch.stack([base, base / 100.0 * -1.0]), torch.stack([base.flip(0), base * 3.0])]).reshape(2, 2, 4, 4)
    mask = quantile_mask(edit, 0.9)
    assert mask.flatten(2).sum(2).tolist() == [[2, 2], [2, 2]]
    second = edit.abs().flatten(2).topk(2, dim=2).values[..., -1]
    assert torch.equal(mask, edit.abs() >= second[..., None, None])


@pytest.mark.parametrize("q, kept", [(0.0, 16), (1.0, 1), (14 / 15, 2)])
def test_mask_keeps_elements_at_the_quantile(q, kept):
    """'>=': the element that defines the quantile is kept (q = 1: the maximum; 14/15: rank 14 exactly)."""
    edit = (torch.arange(16, dtype=torch.float64) + 1.0).reshape(1, 1, 4, 4)
    assert int(quantile_mask(edit, q).sum()) == kept


def test_flat_samples_are_one_channel_and_one_dimension_is_np_with_momentum():
    """[B, D]: the quantile runs over the D features. D = 2 at q = 0.9 keeps the larger component;
    D = 1 keeps everything, so with s_m = 0 SEGA after warm-up is NP with scale s_e (float64: the threshold
    is the element itself and is not rounded to float32)."""
    gen = torch.Generator().manual_seed(47)
    two = _randn(gen, (64, 2))
    assert torch.equal(quantile_mask(two, 0.9), two.abs() == two.abs().amax(1, keepdim=True))
    one = _randn(gen, (256, 1))
    method = SemanticGuidance(SemanticGuidance.Params(s_e=3.0, s_m=0.0, **LITERAL))
    np_ = NegativePrompting(NegativePrompting.Params(scale=3.0))
    preds = {"uncond": one, "neg": _randn(gen, (256, 1))}
    eps, state = guide(method, CHAIN[5], preds, init_state(method, 256, one))
    torch.testing.assert_close(eps, guide(np_, CHAIN[5], preds, {})[0], **TOL)
    assert torch.all(state["guidance_scale"] == 3.0)


def test_momentum_builds_during_warmup_and_decays_after_cooldown():
    """Constant predictions: the edit term e is the same each step, guidance_i = e + s_m mom_i; after the
    cooldown only s_m mom is applied and the momentum decays by beta_m + (1 - beta_m) s_m per step."""
    gen = torch.Generator().manual_seed(48)
    shape = (2, 1, 4, 4)
    preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape)}
    p = SemanticGuidance.Params(warmup=4, cooldown=7, s_m=0.5, beta_m=0.3, threshold=0.5, **LITERAL)
    method = SemanticGuidance(p)
    state = init_state(method, 2, preds["uncond"])
    e = -(preds["neg"] - preds["uncond"]) * p.s_e
    e = torch.where(quantile_mask(e, p.threshold), e, torch.zeros_like(e))
    mom = torch.zeros(shape, dtype=torch.float64)
    before = mom
    for step in CHAIN[:12]:
        eps, state = guide(method, step, preds, state)
        term = e if step.index < 7 else torch.zeros_like(e)
        guidance = term + p.s_m * mom
        mom = p.beta_m * mom + (1 - p.beta_m) * guidance
        torch.testing.assert_close(state["momentum"], mom, **TOL)
        torch.testing.assert_close(eps, preds["uncond"] + (guidance if step.index >= 4 else 0.0), **TOL)
        if step.index == 3:
            assert torch.equal(eps, preds["uncond"]) and mom.abs().sum() > 0  # momentum built, not applied
        if step.index >= 7:
            torch.testing.assert_close(state["momentum"], before * (p.beta_m + (1 - p.beta_m) * p.s_m), **TOL)
        before = state["momentum"]
        state = observe(method, step, preds["uncond"], preds["uncond"], preds, state)


def test_scale_multiplies_the_applied_guidance_and_momentum_stays_in_diffusers_units():
    gen = torch.Generator().manual_seed(49)
    shape = (3, 2, 4, 4)
    method = SemanticGuidance(params_for(CUSTOM, scale=0.4))
    zero = SemanticGuidance(params_for(CUSTOM, scale=0.0))
    loop = DiffusersLoop(1.0, **CUSTOM, quantile_in_float32=False)
    state = init_state(method, 3, _randn(gen, shape))
    zstate = init_state(zero, 3, _randn(gen, shape))
    for step in CHAIN[:12]:
        preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape)}
        eps, state = guide(method, step, preds, state)
        eps0, zstate = guide(zero, step, preds, zstate)
        loop(step.index, preds["uncond"], preds["uncond"], preds["neg"])
        applied = 0.4 if step.index >= CUSTOM["edit_warmup_steps"] else 0.0
        torch.testing.assert_close(eps, preds["uncond"] + applied * loop.last_guidance, **TOL)
        torch.testing.assert_close(state["momentum"], loop.edit_momentum, **TOL)
        assert torch.equal(eps0, preds["uncond"])
        mask_share = state["guidance_scale"] / (applied * CUSTOM["edit_guidance_scale"]) if applied else state["guidance_scale"]
        if step.index < CUSTOM["edit_warmup_steps"] or step.index >= CUSTOM["edit_cooldown_steps"]:
            assert torch.all(state["guidance_scale"] == 0)
        else:  # the mask keeps about 1 - threshold of each channel
            assert torch.all((mask_share > 0.3) & (mask_share < 0.5))


def test_window_keeps_momentum_evolving_outside():
    gen = torch.Generator().manual_seed(50)
    shape = (2, 1, 4, 4)
    config = {**DIFFUSERS_DEFAULTS, "edit_warmup_steps": 1}
    method = SemanticGuidance(params_for(config, t_low=897, t_high=958))  # steps 2..5 of the 50-step chain
    loop = DiffusersLoop(1.0, **config, quantile_in_float32=False)
    state = init_state(method, 2, _randn(gen, shape))
    inside = []
    for step in CHAIN[:8]:
        preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape)}
        eps, state = guide(method, step, preds, state)
        want = loop(step.index, preds["uncond"], preds["uncond"], preds["neg"])
        torch.testing.assert_close(state["momentum"], loop.edit_momentum, **TOL)
        inside.append(897 <= step.t <= 958)
        if inside[-1]:
            torch.testing.assert_close(eps, want, **TOL)
        else:
            assert torch.equal(eps, preds["uncond"]) and torch.all(state["guidance_scale"] == 0)
        state = observe(method, step, preds["uncond"], preds["uncond"], preds, state)
    assert inside == [False, False, True, True, True, True, False, False]


def test_defaults_are_diffusers_call_defaults():
    """diffusers' defaults, the warm-up of 10 of its 50 inference steps as the training timestep 800 of T = 1000."""
    p = SemanticGuidance.Params()
    assert (p.scale, p.s_e, p.threshold, p.warmup, p.warmup_t, p.cooldown, p.s_m, p.beta_m) == (1.0, 5.0, 0.9, 0, 800, -1, 0.1, 0.4)
    assert params_for(DIFFUSERS_DEFAULTS) == replace(p, warmup=10, warmup_t=1000)
    assert (p.t_low, p.t_high) == (WINDOW_DEFAULTS["t_low"], WINDOW_DEFAULTS["t_high"])
    assert SemanticGuidance().config() == {"method": "sega", "params": {"scale": 1.0, "s_e": 5.0, "threshold": 0.9, "warmup": 0,
                                                                      "warmup_t": 800, "cooldown": -1, "s_m": 0.1, "beta_m": 0.4}}


def first_guided_step(params: SemanticGuidance.Params, steps: int) -> int:
    """Index of the first step of a `steps`-step chain on which SEGA applies guidance (1-D samples: the mask keeps all)."""
    method = SemanticGuidance(params)
    preds = {"uncond": torch.zeros(2, 1, dtype=torch.float64), "neg": torch.ones(2, 1, dtype=torch.float64)}
    state = init_state(method, 2, preds["uncond"])
    for step in Schedule().steps(steps):
        eps, state = guide(method, step, preds, state)
        if not torch.equal(eps, preds["uncond"]):
            return step.index
    return steps


@pytest.mark.parametrize("steps", [50, 100, 1000])
def test_warmup_is_the_same_share_of_every_chain(steps):
    """Default: the first 20% of the chain is warm-up on 50, 100 and 1,000 steps (diffusers' 10 of 50); the old
    count in sampling steps (warmup=10, warmup_t=1000) is 10 steps on every chain, 1% of a 1,000-step one."""
    assert first_guided_step(SemanticGuidance.Params(), steps) == steps // 5
    assert first_guided_step(SemanticGuidance.Params(warmup=10, **LITERAL), steps) == 10
    assert first_guided_step(SemanticGuidance.Params(warmup_t=0), steps) == steps  # t < 0 never: no guidance at all


def test_defaults_match_the_installed_diffusers_source():
    """Read (not import) the installed pipeline's __call__ signature; skipped where diffusers or the file is absent."""
    spec = importlib.util.find_spec("diffusers")
    if spec is None or spec.origin is None:
        pytest.skip("diffusers not installed")
    root = Path(spec.origin).parent / "pipelines"
    found = sorted(root.glob("**/semantic_stable_diffusion/pipeline_semantic_stable_diffusion.py"))
    if not found:
        pytest.skip("this diffusers has no SemanticStableDiffusionPipeline")
    tree = ast.parse(found[0].read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "__call__")
    args = call.args.args[len(call.args.args) - len(call.args.defaults):]
    defaults = {a.arg: ast.literal_eval(d) for a, d in zip(args, call.args.defaults) if a.arg in DIFFUSERS_DEFAULTS}
    assert defaults == DIFFUSERS_DEFAULTS


@pytest.mark.parametrize("bad, match", [
    ({"threshold": 1.5}, "threshold"), ({"threshold": -0.1}, "threshold"), ({"beta_m": 1.0}, "beta_m"),
    ({"beta_m": -0.2}, "beta_m"), ({"s_e": -1.0}, "s_e"), ({"s_e": math.inf}, "s_e"), ({"s_m": math.nan}, "s_m"),
    ({"warmup": -1}, "warmup"), ({"warmup_t": -1}, "warmup_t"), ({"cooldown": -2}, "cooldown"), ({"scale": math.nan}, "scale"),
    ({"t_low": 500, "t_high": 100}, "t_low"),
])
def test_parameter_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        SemanticGuidance(SemanticGuidance.Params(**bad))
    with pytest.raises(ValueError, match=match):
        DiffusersSemanticGuidance(DiffusersSemanticGuidance.Params(**bad))
