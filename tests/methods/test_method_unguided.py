"""`none`: the unconditional model's own prediction at every step (DDPM, Ho et al. 2020), scale traced as 0."""
from __future__ import annotations

import pytest
import torch

from negguide.methods import Schedule, load_method
from negguide.methods.base import guide, init_state, observe

CHAIN = Schedule().steps(50)


@pytest.mark.parametrize("window", [{}, {"t_low": 306, "t_high": 714}])
@pytest.mark.parametrize("shape", [(3, 1, 4, 4), (5, 2)])
def test_unguided_returns_uncond_at_every_step(shape, window):
    gen = torch.Generator().manual_seed(61)
    method = load_method("none", window)
    assert method.needs == ("uncond",)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    state = init_state(method, shape[0], x)
    for step in CHAIN:
        preds = {"uncond": torch.randn(shape, generator=gen, dtype=torch.float64)}
        eps, state = guide(method, step, preds, state)
        assert torch.equal(eps, preds["uncond"])
        assert torch.equal(method.trace(state)["guidance_scale"], torch.zeros(shape[0], dtype=torch.float64))
        state = observe(method, step, x, x, preds, state)


def test_unguided_config_names_no_window_by_default():
    assert load_method("none", {}).config() == {"method": "none", "params": {"scale": 1.0}}
