"""`np-delayed` against Ban et al. 2024 (ECCV), transcribed here: no negative guidance before the
critical step, Negative Prompting (DNG paper Eq. 6) from it on.

    eps = eps_u                          while t > t_critical
    eps = eps_u - lam (eps_n - eps_u)    once t <= t_critical     (and t >= t_low, the base window)

t_critical is the base window's t_high (default 800 of T = 1000), so the window is always in the config.
"""
from __future__ import annotations

import pytest
import torch

from negguide.methods import Schedule
from negguide.methods.negative_prompting import IntervalNegativePrompting, NegativePrompting
from negguide.methods.np_delayed import T_CRITICAL, DelayedNegativePrompting
from negguide.methods.base import guide, init_state, observe

CHAIN = Schedule().steps(50)
SHAPES = [(3, 1, 4, 4), (5, 2)]
TOL = {"rtol": 1e-12, "atol": 1e-12}


def _randn(gen: torch.Generator, shape) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def delayed(t: int, eps_u: torch.Tensor, eps_n: torch.Tensor, lam: float, t_critical: int, t_low: int = 0):
    """The delayed sampler's prediction and traced scale, written from the paper's description."""
    if t_low <= t <= t_critical:
        return eps_u + lam * eps_u - lam * eps_n, lam
    return eps_u, 0.0


def method(**params) -> DelayedNegativePrompting:
    return DelayedNegativePrompting(DelayedNegativePrompting.Params(**params))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale,t_critical", [(1.0, None), (3.0, 500), (-1.25, 999), (2.0, 0)])
def test_delayed_np_over_the_whole_chain(shape, scale, t_critical):
    gen = torch.Generator().manual_seed(31)
    m = method(scale=scale) if t_critical is None else method(scale=scale, t_high=t_critical)
    t_critical = T_CRITICAL if t_critical is None else t_critical
    state = init_state(m, shape[0], _randn(gen, shape))
    for step in CHAIN:
        preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape)}
        eps, state = guide(m, step, preds, state)
        want, lam = delayed(step.t, preds["uncond"], preds["neg"], scale, t_critical)
        torch.testing.assert_close(eps, want, **TOL)
        if lam == 0.0:
            assert torch.equal(eps, preds["uncond"])  # before the critical step: exactly unguided
        assert torch.equal(state["guidance_scale"], torch.full((shape[0],), lam, dtype=torch.float64))
        state = observe(m, step, preds["uncond"], preds["uncond"], preds, state)


def test_default_delay_is_the_first_fifth_of_the_chain():
    """t_critical = 800: 10 of 50 and 20 of 100 steps unguided; 5 of Stable Diffusion's 30 DDIM steps
    (958, 925, 892, 859, 826 | 793, ...), the paper's critical step for objects."""
    assert DelayedNegativePrompting.Params().t_high == T_CRITICAL == 800
    m = method()
    for steps, unguided in ((50, 10), (100, 20)):
        assert sum(not m.active(s) for s in Schedule().steps(steps)) == unguided
        assert [m.active(s) for s in Schedule().steps(steps)] == [i >= unguided for i in range(steps)]
    sd_ddim_30 = [958 - 33 * i for i in range(30)]
    assert sum(t > T_CRITICAL for t in sd_ddim_30) == 5


def test_with_t_low_it_is_np_interval_and_np_interval_ending_at_t_critical_is_it():
    gen = torch.Generator().manual_seed(32)
    shape = (4, 1, 4, 4)
    t_low, t_high = 306, 714  # timesteps of the 50-step chain: both bounds inclusive
    a = method(scale=1.5, t_low=t_low)
    a_high = method(scale=1.5, t_low=t_low, t_high=t_high)
    b = IntervalNegativePrompting(IntervalNegativePrompting.Params(scale=1.5, t_high=T_CRITICAL, t_low=t_low))
    b_high = IntervalNegativePrompting(IntervalNegativePrompting.Params(scale=1.5, t_low=t_low, t_high=t_high))
    inside = []
    for step in CHAIN:
        preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape)}
        eps_a, _ = guide(a, step, preds, {})
        assert torch.equal(eps_a, guide(b, step, preds, {})[0])
        assert torch.equal(guide(a_high, step, preds, {})[0], guide(b_high, step, preds, {})[0])
        want, lam = delayed(step.t, preds["uncond"], preds["neg"], 1.5, T_CRITICAL, t_low)
        torch.testing.assert_close(eps_a, want, **TOL)
        inside.append(lam != 0.0)
    ts = [s.t for s in CHAIN]
    assert t_low in ts and inside[ts.index(t_low)] and not inside[ts.index(t_low) + 1]
    assert sum(inside) == sum(t_low <= t <= T_CRITICAL for t in ts)


def test_whole_chain_window_is_np():
    gen = torch.Generator().manual_seed(33)
    a, b = method(scale=2.0, t_high=999), NegativePrompting(NegativePrompting.Params(scale=2.0))
    for step in (CHAIN[0], CHAIN[25], CHAIN[-1]):
        preds = {"uncond": _randn(gen, (2, 3)), "neg": _randn(gen, (2, 3))}
        assert torch.equal(guide(a, step, preds, {})[0], guide(b, step, preds, {})[0])


def test_config_always_lists_the_window():
    assert method().config() == {"method": "np-delayed", "params": {"scale": 1.0, "t_low": 0, "t_high": 800}}
    assert method(scale=2.0, t_high=650).config()["params"] == {"scale": 2.0, "t_low": 0, "t_high": 650}
    assert DelayedNegativePrompting.name == "np-delayed" and DelayedNegativePrompting.needs == ("uncond", "neg")
    assert "Ban" in DelayedNegativePrompting.reference  # its own, not the inherited NP reference


@pytest.mark.parametrize("params,word", [
    ({"t_high": -1}, "t_high"),
    ({"t_low": 900}, "t_low"),  # above the default t_critical = 800
    ({"t_low": -5}, "t_low"),
    ({"scale": float("nan")}, "scale"),
    ({"scale": float("inf")}, "scale"),
])
def test_bad_parameters_raise_value_error_naming_them(params, word):
    with pytest.raises(ValueError, match=word):
        method(**params)
