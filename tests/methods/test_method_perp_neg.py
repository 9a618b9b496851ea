"""`perp-neg` against the reference Perp-Neg pipeline's guidance, transcribed here.

Perp-Neg-stablediffusion, pipeline_perpneg_stable_diffusion.py, with prompts "positive | negative",
weights "1 | -w_neg" (one image: every sum runs over that sample's whole latent):

    perp(x, y)     = x - (sum(x * y) / ||y||^2) y
    aggregate      = main_positive - w_neg * perp(delta_neg, main_positive)
    delta_pos      = eps(positive) - eps(empty),  delta_neg = eps(negative) - eps(empty)
    noise_pred     = eps(empty) + guidance_scale * aggregate

The harness applies null + w (eps_method - null) after the method; with uncond = eps(positive),
neg = eps(negative), null = eps(empty) and scale = w_neg that is compared with noise_pred.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from negguide.methods.negative_prompting import NegativePrompting
from negguide.methods.perp_neg import PerpNegGuidance
from negguide.methods.schedule import Schedule
from negguide.methods.base import guide, init_state, observe

CHAIN = Schedule().steps(50)
TOL = {"rtol": 1e-12, "atol": 1e-12}
SHAPES = [(3, 1, 4, 4), (5, 2), (2, 4, 3, 5)]


def _randn(gen: torch.Generator, shape) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def reference_perp(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    assert x.shape == y.shape
    return x - ((torch.mul(x, y).sum()) / (torch.norm(y) ** 2)) * y


def reference_noise_pred(uncond, positive, negative, guidance_scale, w_neg):
    """One image at a time, as the reference pipeline runs (batch of one)."""
    out = []
    for b in range(len(uncond)):
        main_positive = (positive[b] - uncond[b]).unsqueeze(0)
        delta_neg = (negative[b] - uncond[b]).unsqueeze(0)
        aggregate = 0 - w_neg * reference_perp(delta_neg, main_positive) + main_positive
        out.append(uncond[b].unsqueeze(0) + guidance_scale * aggregate)
    return torch.cat(out)


def cfg(eps, preds, w):
    return preds["null"] + w * (eps - preds["null"])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("w, scale", [(1.0, 1.0), (7.5, 1.5), (3.0, 0.4), (7.5, -0.5)])
def test_perp_neg_after_the_task_cfg_is_the_reference(shape, w, scale):
    gen = torch.Generator().manual_seed(61)
    method = PerpNegGuidance(PerpNegGuidance.Params(scale=scale))
    state = init_state(method, shape[0], _randn(gen, shape))
    for step in CHAIN[:10]:
        preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape), "null": _randn(gen, shape)}
        eps, state = guide(method, step, preds, state)
        want = reference_noise_pred(preds["null"], preds["uncond"], preds["neg"], w, scale)
        torch.testing.assert_close(cfg(eps, preds, w), want, **TOL)
        assert eps.dtype == torch.float64 and eps.shape == shape
        assert torch.equal(state["guidance_scale"], torch.full((shape[0],), scale, dtype=torch.float64))
        state = observe(method, step, preds["uncond"], preds["uncond"], preds, state)


def test_the_removed_direction_is_perpendicular_to_the_positive_one():
    gen = torch.Generator().manual_seed(62)
    shape = (4, 2, 4, 4)
    preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape), "null": _randn(gen, shape)}
    eps, _ = guide(PerpNegGuidance(PerpNegGuidance.Params(scale=2.0)), CHAIN[3], preds, {})
    e_pos = (preds["uncond"] - preds["null"]).flatten(1)
    change = (eps - preds["uncond"]).flatten(1)
    assert torch.all((change * e_pos).sum(1).abs() <= 1e-12 * change.norm(dim=1) * e_pos.norm(dim=1))
    assert torch.all(change.norm(dim=1) > 0)


def test_a_negative_along_the_positive_direction_is_not_removed():
    """e_neg = c e_pos (a concept the positive prompt already implies, or its opposite): no change at all."""
    gen = torch.Generator().manual_seed(63)
    shape = (3, 1, 4, 4)
    null, uncond = _randn(gen, shape), _randn(gen, shape)
    c = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    preds = {"uncond": uncond, "null": null, "neg": null + c * (uncond - null)}
    eps, _ = guide(PerpNegGuidance(PerpNegGuidance.Params(scale=3.0)), CHAIN[0], preds, {})
    torch.testing.assert_close(eps, uncond, **TOL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [0.5, 3.0, -1.25])
def test_with_null_equal_to_uncond_perp_neg_is_np(shape, scale):
    """The class-removal reduction: eps_null := eps_u makes e_pos = 0, the guard keeps the whole negative
    direction, and the output is NP's, bit for bit."""
    gen = torch.Generator().manual_seed(64)
    perp = PerpNegGuidance(PerpNegGuidance.Params(scale=scale))
    np_ = NegativePrompting(NegativePrompting.Params(scale=scale))
    for step in CHAIN[::7]:
        uncond = _randn(gen, shape)
        preds = {"uncond": uncond, "neg": _randn(gen, shape), "null": uncond.clone()}
        got, state = guide(perp, step, preds, {})
        want, np_state = guide(np_, step, preds, {})
        assert torch.equal(got, want)
        assert torch.equal(state["guidance_scale"], np_state["guidance_scale"])


def test_zero_positive_direction_is_guarded_per_sample():
    """Rows with e_pos = 0 get NP; the other rows still get the projection; nothing is NaN."""
    gen = torch.Generator().manual_seed(65)
    shape = (4, 1, 4, 4)
    preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape), "null": _randn(gen, shape)}
    preds["null"][1] = preds["uncond"][1]
    preds["null"][3] = preds["uncond"][3]
    eps, _ = guide(PerpNegGuidance(PerpNegGuidance.Params(scale=1.5)), CHAIN[2], preds, {})
    assert torch.isfinite(eps).all()
    np_eps = preds["uncond"] - 1.5 * (preds["neg"] - preds["uncond"])
    assert torch.equal(eps[[1, 3]], np_eps[[1, 3]])
    want = reference_noise_pred(preds["null"][[0, 2]], preds["uncond"][[0, 2]], preds["neg"][[0, 2]], 1.0, 1.5)
    torch.testing.assert_close(eps[[0, 2]], want, **TOL)


def test_scale_zero_is_the_positive_prediction():
    gen = torch.Generator().manual_seed(66)
    preds = {k: _randn(gen, (2, 3)) for k in ("uncond", "neg", "null")}
    eps, _ = guide(PerpNegGuidance(PerpNegGuidance.Params(scale=0.0)), CHAIN[0], preds, {})
    assert torch.equal(eps, preds["uncond"])


def test_window_gives_the_positive_prediction_outside():
    gen = torch.Generator().manual_seed(67)
    shape = (2, 1, 4, 4)
    method = PerpNegGuidance(PerpNegGuidance.Params(scale=2.0, t_low=306, t_high=714))
    visited = set()
    for step in CHAIN:
        preds = {k: _randn(gen, shape) for k in ("uncond", "neg", "null")}
        eps, state = guide(method, step, preds, {})
        inside = 306 <= step.t <= 714
        visited.add(inside)
        if inside:
            torch.testing.assert_close(cfg(eps, preds, 7.5), reference_noise_pred(preds["null"], preds["uncond"], preds["neg"], 7.5, 2.0), **TOL)
            assert torch.all(state["guidance_scale"] == 2.0)
        else:
            assert torch.equal(eps, preds["uncond"]) and torch.all(state["guidance_scale"] == 0.0)
    assert visited == {True, False}


def test_declares_its_predictions_and_config():
    assert PerpNegGuidance.name == "perp-neg"
    assert PerpNegGuidance.needs == ("uncond", "neg", "null")
    assert "2304.04968" in PerpNegGuidance.reference
    assert PerpNegGuidance().config() == {"method": "perp-neg", "params": {"scale": 1.0}}


def test_class_removal_tasks_refuse_it_in_one_line(tmp_path):
    from negguide.bench.run.plan import RunRequest, resolve
    from negguide.methods import BenchError

    # a user's file method with the same needs (a file may not take a built-in's name)
    path = tmp_path / "my_perp_neg.py"
    path.write_text("from negguide.methods.perp_neg import PerpNegGuidance\n\n\nclass Mine(PerpNegGuidance):\n    name = 'my-perp-neg'\n")
    spec = f"{path}:Mine"
    with pytest.raises(BenchError, match=r"needs predictions \['null'\] that task 'gmm1d-remove-1' does not provide") as info:
        resolve(RunRequest(task="gmm1d-remove-1", method=spec))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad, match", [({"scale": math.nan}, "scale"), ({"scale": math.inf}, "scale"),
                                        ({"t_low": 500, "t_high": 100}, "t_low"), ({"t_low": -1}, "t_low")])
def test_parameter_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        PerpNegGuidance(PerpNegGuidance.Params(**bad))
