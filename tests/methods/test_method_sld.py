"""`sld`: the DNG paper's class-removal adaptation of Safe Latent Diffusion, over several steps.

Transcribed here from the paper (Appendix E, Eq. 21) and the reference code's SLD loop
(FelixKoulischer/Dynamic-Negative-Guidance, utils/Generate_Batch_pretrained.py, gen_batch_SLD):

    Lambda     = lam0 * min(1, s_s |eps_u - eps_n|)   where eps_u - eps_n < threshold, else 0   (element-wise)
    correction = Lambda/lam0 * (eps_n - eps_u) + s_m * momentum
    momentum  <- beta_m * momentum + (1 - beta_m) * correction
    eps        = eps_u - lam0 * correction

plus the warm-up of diffusers' StableDiffusionPipelineSafe (the reference loop has none, i.e. warmup = 0):
for step index i < warmup no guidance is applied but the momentum is still accumulated.
"""
from __future__ import annotations

import pytest
import torch

from negguide.methods import Schedule, load_method
from negguide.methods.base import guide, init_state, observe

CHAIN = Schedule().steps(50)
TOL = {"rtol": 1e-12, "atol": 1e-12}


def _randn(gen: torch.Generator, shape) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def sld_preds(gen: torch.Generator, shape, threshold: float, s_s: float) -> dict[str, torch.Tensor]:
    """eps_u, eps_n whose difference d = eps_u - eps_n covers every branch of Eq. 21:
    far below / above the threshold (mask saturated at 1 or 0), inside the linear ramp |d| < 1/s_s,
    between the ramp and the threshold, and exactly on the threshold (strict '<': mask 0)."""
    n = torch.Size(shape).numel()
    eps_u = _randn(gen, shape).reshape(-1)
    kind = torch.randint(0, 4, (n,), generator=gen)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    d = torch.where(kind == 0, 2.0 * _randn(gen, (n,)),  # mostly saturated
                    torch.where(kind == 1, (2.0 * u - 1.0) / s_s,  # linear ramp
                                torch.where(kind == 2, -1.0 / s_s + u * (threshold + 2.0 / s_s), torch.zeros(n, dtype=torch.float64))))
    eps_n = eps_u - d
    # Exactly on the threshold: eps_u = threshold, eps_n = 0 makes eps_u - eps_n == threshold bit for bit.
    on = torch.arange(n) % 7 == 3
    eps_u, eps_n = torch.where(on, threshold, eps_u), torch.where(on, 0.0, eps_n)
    assert torch.any((eps_u - eps_n) == threshold)
    return {"uncond": eps_u.reshape(shape), "neg": eps_n.reshape(shape)}


class PaperSLD:
    """Eq. 21 + momentum, with diffusers' warm-up; written from the equations, not from the method."""

    def __init__(self, lam0, threshold, s_s, beta_m, s_m, warmup):
        self.lam0, self.threshold, self.s_s, self.beta_m, self.s_m, self.warmup = lam0, threshold, s_s, beta_m, s_m, warmup
        self.momentum = None
        self.i = 0

    def __call__(self, eps_u, eps_n):
        if self.momentum is None:
            self.momentum = torch.zeros_like(eps_u)
        gap = eps_u - eps_n  # epsilon_theta (-) epsilon_theta,c-
        strength = torch.minimum(torch.ones_like(gap), self.s_s * gap.abs())
        pixel_scale = torch.where(gap < self.threshold, strength, torch.zeros_like(gap))  # Lambda / lam0
        correction = pixel_scale * (eps_n - eps_u) + self.s_m * self.momentum
        self.momentum = self.beta_m * self.momentum + (1.0 - self.beta_m) * correction
        lam = self.lam0 if self.i >= self.warmup else 0.0
        self.i += 1
        return eps_u - lam * correction, self.momentum.clone(), lam * pixel_scale.flatten(1).mean(1)


CASES = [
    # lam0, threshold, s_s, beta_m, s_m, warmup
    (0.5, 0.04, 100.0, 0.1, 0.2, 0),  # the method's defaults (reference CLI defaults)
    (0.5, 0.04, 100.0, 0.2, 0.1, 2),  # paper Appendix D.2 values, warm-up of 2 steps
    (1.7, 0.0, 20.0, 0.6, 0.9, 3),
    (0.8, -0.3, 5.0, 0.0, 0.0, 1),  # no momentum, negative threshold
]


@pytest.mark.parametrize("shape", [(3, 1, 4, 4), (6, 2)])
@pytest.mark.parametrize("lam0,threshold,s_s,beta_m,s_m,warmup", CASES)
def test_sld_matches_eq21_with_momentum_and_warmup_over_5_steps(shape, lam0, threshold, s_s, beta_m, s_m, warmup):
    gen = torch.Generator().manual_seed(21)
    method = load_method("sld", {"scale": lam0, "threshold": threshold, "s_s": s_s, "beta_m": beta_m, "s_m": s_m, "warmup": warmup})
    paper = PaperSLD(lam0, threshold, s_s, beta_m, s_m, warmup)
    x = _randn(gen, shape)
    state = init_state(method, shape[0], x)
    assert torch.equal(state["momentum"], torch.zeros(shape, dtype=torch.float64))
    for step in CHAIN[:5]:
        preds = sld_preds(gen, shape, threshold, s_s)
        eps, state = guide(method, step, preds, state)
        want_eps, want_momentum, want_trace = paper(preds["uncond"], preds["neg"])
        torch.testing.assert_close(eps, want_eps, **TOL)
        torch.testing.assert_close(state["momentum"], want_momentum, **TOL)
        torch.testing.assert_close(method.trace(state)["guidance_scale"], want_trace, **TOL)
        if step.index < warmup:
            assert torch.equal(eps, preds["uncond"])  # warm-up: no guidance ...
        state = observe(method, step, x, x, preds, state)  # sld has no observe: the state passes through
    if s_m > 0 and beta_m < 1:
        assert state["momentum"].abs().sum() > 0  # ... but the momentum did build up


def test_threshold_is_strict_and_ramp_saturates_at_one():
    """Single elements: d = threshold -> no guidance; d just below -> min(1, s_s|d|); d very negative -> 1."""
    method = load_method("sld", {"scale": 1.0, "threshold": 0.04, "s_s": 100.0, "s_m": 0.0, "beta_m": 0.0})
    eps_u = torch.tensor([[0.04, 0.03, 0.005, -2.0]], dtype=torch.float64)
    eps_n = torch.zeros_like(eps_u)
    eps, state = guide(method, CHAIN[0], {"uncond": eps_u, "neg": eps_n}, init_state(method, 1, eps_u))
    # eps = eps_u - mask * (eps_n - eps_u) = eps_u + mask * eps_u (eps_n = 0)
    mask = torch.tensor([[0.0, 1.0, 0.5, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(eps, eps_u * (1.0 + mask), **TOL)
    torch.testing.assert_close(state["guidance_scale"], mask.mean(1), **TOL)


T_LOW, T_HIGH = 897, 979  # steps 1..5 of the 50-step chain


def test_window_keeps_momentum_evolving_outside():
    gen = torch.Generator().manual_seed(22)
    params = {"scale": 0.9, "threshold": 0.04, "s_s": 100.0, "beta_m": 0.3, "s_m": 0.5, "warmup": 2}
    windowed = load_method("sld", {**params, "t_low": T_LOW, "t_high": T_HIGH})
    paper = PaperSLD(0.9, 0.04, 100.0, 0.3, 0.5, 2)
    shape = (4, 1, 4, 4)
    state = init_state(windowed, shape[0], _randn(gen, shape))
    for step in CHAIN[:9]:
        preds = sld_preds(gen, shape, 0.04, 100.0)
        eps, state = guide(windowed, step, preds, state)
        want_eps, want_momentum, want_trace = paper(preds["uncond"], preds["neg"])
        torch.testing.assert_close(state["momentum"], want_momentum, **TOL)  # momentum always evolves
        if T_LOW <= step.t <= T_HIGH:
            torch.testing.assert_close(eps, want_eps, **TOL)
            torch.testing.assert_close(state["guidance_scale"], want_trace, **TOL)
        else:
            assert torch.equal(eps, preds["uncond"])
            assert torch.equal(state["guidance_scale"], torch.zeros(shape[0], dtype=torch.float64))
        state = observe(windowed, step, preds["uncond"], preds["uncond"], preds, state)


def test_defaults_are_the_reference_code_defaults():
    """Reference CLI (Hyperparameters/parse_hyperparameters.py): threshold 0.04, s_s 100, beta_m 0.1, s_m 0.2;
    the paper's Appendix D.2 text says beta_m = 0.2, s_m = 0.1 (and its gen_batch signature agrees with the text)."""
    p = load_method("sld", {}).params
    assert (p.scale, p.threshold, p.s_s, p.beta_m, p.s_m, p.warmup) == (0.5, 0.04, 100.0, 0.1, 0.2, 0)
