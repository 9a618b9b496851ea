"""`np` and `np-interval` against paper Eq. 6, transcribed here in score space.

Eq. 6:  s_NP = s_theta - lambda (s_theta,c- - s_theta),  with s = -eps / sqrt(1 - abar_t) (Sec. 2.1).
np-interval is the same update restricted to training timesteps t_low <= t <= t_high
(Kynkaenniemi et al. 2024, used negatively); outside it the unguided prediction is taken.
"""
from __future__ import annotations

import pytest
import torch

from negguide.methods import Schedule, load_method
from negguide.methods.base import guide, init_state, observe

CHAIN = Schedule().steps(50)
SHAPES = [(3, 1, 4, 4), (5, 2)]
TOL = {"rtol": 1e-12, "atol": 1e-12}


def _randn(gen: torch.Generator, shape) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def eq6_in_eps(step, eps_u: torch.Tensor, eps_n: torch.Tensor, lam: float) -> torch.Tensor:
    """Paper Eq. 6 applied to scores, converted back to a noise prediction."""
    sigma = (1.0 - step.alpha_bar) ** 0.5
    s_u, s_n = -eps_u / sigma, -eps_n / sigma
    s_np = s_u - lam * (s_n - s_u)
    return -sigma * s_np


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [0.5, 3.0, -1.25])
def test_np_is_eq6_at_every_step(shape, scale):
    gen = torch.Generator().manual_seed(11)
    method = load_method("np", {"scale": scale})
    state = init_state(method, shape[0], _randn(gen, shape))
    for step in CHAIN:
        preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape)}
        eps, state = guide(method, step, preds, state)
        torch.testing.assert_close(eps, eq6_in_eps(step, preds["uncond"], preds["neg"], scale), **TOL)
        assert eps.dtype == torch.float64 and eps.shape == shape
        torch.testing.assert_close(state["guidance_scale"], torch.full((shape[0],), scale, dtype=torch.float64), rtol=0, atol=0)
        state = observe(method, step, preds["uncond"], preds["uncond"], preds, state)


def test_np_scale_zero_is_the_unguided_prediction():
    gen = torch.Generator().manual_seed(12)
    method = load_method("np", {"scale": 0.0})
    preds = {"uncond": _randn(gen, (2, 1, 4, 4)), "neg": _randn(gen, (2, 1, 4, 4))}
    eps, _ = guide(method, CHAIN[10], preds, init_state(method, 2, preds["uncond"]))
    assert torch.equal(eps, preds["uncond"])


# Window bounds chosen on timesteps of the 50-step chain, so inclusivity at both ends is pinned.
T_LOW, T_HIGH = 306, 714


@pytest.mark.parametrize("name", ["np-interval", "np"])
@pytest.mark.parametrize("shape", SHAPES)
def test_interval_applies_eq6_inside_and_unguided_outside(name, shape):
    gen = torch.Generator().manual_seed(13)
    scale = 2.5
    method = load_method(name, {"scale": scale, "t_low": T_LOW, "t_high": T_HIGH})
    state = init_state(method, shape[0], _randn(gen, shape))
    inside_seen = []
    for step in CHAIN:
        preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape)}
        eps, state = guide(method, step, preds, state)
        inside = T_LOW <= step.t <= T_HIGH
        inside_seen.append(inside)
        if inside:
            torch.testing.assert_close(eps, eq6_in_eps(step, preds["uncond"], preds["neg"], scale), **TOL)
            assert torch.all(state["guidance_scale"] == scale)
        else:
            assert torch.equal(eps, preds["uncond"])
            assert torch.all(state["guidance_scale"] == 0.0)
        state = observe(method, step, preds["uncond"], preds["uncond"], preds, state)
    # Both bounds are chain timesteps and count as inside; both sides of the window were visited.
    ts = [s.t for s in CHAIN]
    assert T_LOW in ts and T_HIGH in ts
    assert inside_seen[ts.index(T_LOW)] and inside_seen[ts.index(T_HIGH)]
    assert sum(inside_seen) == sum(T_LOW <= t <= T_HIGH for t in ts) and 0 < sum(inside_seen) < len(ts)


def test_interval_window_is_part_of_the_config_but_np_lists_it_only_when_changed():
    assert load_method("np-interval", {}).config() == {"method": "np-interval", "params": {"scale": 1.0, "t_low": 0, "t_high": 999}}
    assert load_method("np", {}).config() == {"method": "np", "params": {"scale": 1.0}}
    assert load_method("np", {"t_low": 100}).config()["params"] == {"scale": 1.0, "t_low": 100}


def test_interval_with_the_whole_chain_is_np():
    gen = torch.Generator().manual_seed(14)
    a, b = load_method("np-interval", {"scale": 1.5}), load_method("np", {"scale": 1.5})
    for step in (CHAIN[0], CHAIN[25], CHAIN[-1]):
        preds = {"uncond": _randn(gen, (2, 2)), "neg": _randn(gen, (2, 2))}
        assert torch.equal(guide(a, step, preds, {})[0], guide(b, step, preds, {})[0])
