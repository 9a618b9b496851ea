"""`apg`: Adaptive Projected Guidance (Sadat et al. 2024, Algorithm 1 / Sec. 3-4) used negatively.

Transcribed here from the paper's equations, in the paper's notation, with the negative mapping
D_c := eps_u (the prediction kept), D_u := eps_n (the negative), w - 1 := scale:

    dD_t   = D_c - D_u                                   the CFG update
    dD_t  <- dD_t + beta * dD_{t+1}                       momentum: running sum, dD_{T+1} = 0 (stored before rescaling)
    dD_t  <- dD_t * min(1, r / ||dD_t||)                  rescaling (r > 0)
    dD_par = (<dD_t, D_c> / <D_c, D_c>) D_c,  dD_orth = dD_t - dD_par
    D_hat  = D_c + (w - 1) (dD_orth + eta dD_par)

computed per sample with explicit loops and dot products (not with the method's batched code).
"""
from __future__ import annotations

import math

import pytest
import torch

from negguide.methods import Schedule
from negguide.methods.apg import AdaptiveProjectedGuidance
from negguide.methods.negative_prompting import NegativePrompting
from negguide.methods.base import guide, init_state, observe

CHAIN = Schedule().steps(50)
TOL = {"rtol": 1e-12, "atol": 1e-12}


def _randn(gen: torch.Generator, shape) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def apg(**params) -> AdaptiveProjectedGuidance:
    return AdaptiveProjectedGuidance(AdaptiveProjectedGuidance.Params(**params))


class PaperAPG:
    """Algorithm 1 of the paper, one sample at a time; `clipped` records where the rescaling bit."""

    def __init__(self, w_minus_1, eta, r, beta):
        self.w_minus_1, self.eta, self.r, self.beta = w_minus_1, eta, r, beta
        self.buffer = None
        self.clipped: list[bool] = []

    def __call__(self, d_cond, d_uncond):
        if self.buffer is None:
            self.buffer = [torch.zeros(d_cond[0].numel(), dtype=torch.float64) for _ in range(len(d_cond))]
        out = []
        for i in range(len(d_cond)):
            c, u = d_cond[i].reshape(-1), d_uncond[i].reshape(-1)
            delta = c - u
            delta = delta + self.beta * self.buffer[i]
            self.buffer[i] = delta
            if self.r > 0:
                length = math.sqrt(float(torch.dot(delta, delta)))
                self.clipped.append(length > self.r)
                delta = delta * min(1.0, self.r / length)
            par = float(torch.dot(delta, c)) / float(torch.dot(c, c)) * c
            orth = delta - par
            out.append((c + self.w_minus_1 * (orth + self.eta * par)).reshape(d_cond[i].shape))
        return torch.stack(out), torch.stack([b.reshape(d_cond[0].shape) for b in self.buffer])


CASES = [
    # scale (w - 1), eta, norm_threshold r, momentum beta
    (1.0, 0.0, 15.0, 0.0),  # the method's defaults (diffusers': momentum off)
    (1.0, 0.0, 15.0, -0.5),  # reverse momentum, the value the method used by default before
    (4.0, 0.0, 2.5, -0.75),  # tight cap (the paper's low end), ACE-Step's momentum
    (2.0, 0.3, 4.0, 0.5),  # positive momentum, some parallel part
    (-1.5, 1.7, 0.0, 0.0),  # no rescaling or momentum, eta > 1, negative scale
    (3.0, -0.4, 6.0, -0.9),
]


@pytest.mark.parametrize("shape", [(3, 1, 4, 4), (6, 2), (4, 3, 2, 2)])
@pytest.mark.parametrize("scale,eta,r,beta", CASES)
def test_apg_matches_the_paper_with_momentum_over_8_steps(shape, scale, eta, r, beta):
    gen = torch.Generator().manual_seed(41)
    method = apg(scale=scale, eta=eta, norm_threshold=r, momentum=beta)
    paper = PaperAPG(scale, eta, r, beta)
    state = init_state(method, shape[0], _randn(gen, shape))
    assert torch.equal(state["momentum"], torch.zeros(shape, dtype=torch.float64))
    for step in CHAIN[:8]:
        # ||eps_u - eps_n|| ~ U(0, 2) * r per sample, so that the norm cap bites on about half of them.
        dim = torch.Size(shape[1:]).numel()
        spread = torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=gen, dtype=torch.float64) * 2.0 * (r or 1.0) / dim**0.5
        eps_u = _randn(gen, shape)
        preds = {"uncond": eps_u, "neg": eps_u + spread * _randn(gen, shape)}
        eps, state = guide(method, step, preds, state)
        want, want_buffer = paper(preds["uncond"], preds["neg"])
        torch.testing.assert_close(eps, want, **TOL)
        torch.testing.assert_close(state["momentum"], want_buffer, **TOL)
        assert eps.dtype == torch.float64 and eps.shape == shape
        assert torch.equal(state["guidance_scale"], torch.full((shape[0],), scale, dtype=torch.float64))
        state = observe(method, step, preds["uncond"], preds["uncond"], preds, state)
    if r > 0:
        assert any(paper.clipped) and not all(paper.clipped)  # both branches of the cap were exercised
    if beta != 0:
        assert not torch.allclose(state["momentum"], preds["uncond"] - preds["neg"])  # the buffer holds history


@pytest.mark.parametrize("shape", [(3, 1, 4, 4), (5, 2), (4, 1)])
def test_eta_one_without_cap_or_momentum_is_np(shape):
    gen = torch.Generator().manual_seed(42)
    a = apg(scale=2.5, eta=1.0, norm_threshold=0.0, momentum=0.0)
    b = NegativePrompting(NegativePrompting.Params(scale=2.5))
    sa, sb = init_state(a, shape[0], _randn(gen, shape)), init_state(b, shape[0], _randn(gen, shape))
    for step in CHAIN:
        preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape)}
        (ea, sa), (eb, sb) = guide(a, step, preds, sa), guide(b, step, preds, sb)
        torch.testing.assert_close(ea, eb, **TOL)
        torch.testing.assert_close(sa["guidance_scale"], sb["guidance_scale"], rtol=0, atol=0)


def test_eta_zero_update_is_orthogonal_to_eps_u_and_vanishes_in_one_dimension():
    gen = torch.Generator().manual_seed(43)
    method = apg(scale=3.0)  # defaults: eta = 0
    preds = {"uncond": _randn(gen, (5, 1, 4, 4)), "neg": _randn(gen, (5, 1, 4, 4))}
    eps, _ = guide(method, CHAIN[3], preds, init_state(method, 5, preds["uncond"]))
    dots = ((eps - preds["uncond"]) * preds["uncond"]).flatten(1).sum(1)
    torch.testing.assert_close(dots, torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-12)
    # One-dimensional data: every update is parallel to eps_u, so eta = 0 leaves eps_u.
    one_d = {"uncond": _randn(gen, (6, 1)), "neg": _randn(gen, (6, 1))}
    eps, _ = guide(method, CHAIN[3], one_d, init_state(method, 6, one_d["uncond"]))
    torch.testing.assert_close(eps, one_d["uncond"], **TOL)


def test_degenerate_samples_stay_finite():
    """eps_u = 0: nothing to project on, the whole update counts as orthogonal. eps_n = eps_u with an
    empty buffer: a zero update under the norm cap (no 0/0), so eps = eps_u."""
    method = apg(scale=2.0, eta=0.5, norm_threshold=1.0, momentum=-0.5)
    eps_u = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    eps_n = torch.tensor([[0.3, -0.4, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    eps, state = guide(method, CHAIN[0], {"uncond": eps_u, "neg": eps_n}, init_state(method, 2, eps_u))
    d = eps_u[0] - eps_n[0]  # norm 0.5 < r = 1: not rescaled
    torch.testing.assert_close(eps[0], 2.0 * d, **TOL)
    assert torch.equal(eps[1], eps_u[1])
    torch.testing.assert_close(state["momentum"], eps_u - eps_n, **TOL)


T_LOW, T_HIGH = 897, 979  # steps 1..5 of the 50-step chain


def test_window_is_unguided_outside_while_the_momentum_keeps_accumulating():
    gen = torch.Generator().manual_seed(44)
    shape = (4, 1, 4, 4)
    method = apg(scale=2.0, eta=0.2, norm_threshold=3.0, momentum=-0.6, t_low=T_LOW, t_high=T_HIGH)
    paper = PaperAPG(2.0, 0.2, 3.0, -0.6)
    state = init_state(method, shape[0], _randn(gen, shape))
    seen = {"inside": 0, "outside": 0}
    for step in CHAIN[:9]:
        preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape)}
        eps, state = guide(method, step, preds, state)
        want, want_buffer = paper(preds["uncond"], preds["neg"])
        torch.testing.assert_close(state["momentum"], want_buffer, **TOL)  # always evolves
        if T_LOW <= step.t <= T_HIGH:
            seen["inside"] += 1
            torch.testing.assert_close(eps, want, **TOL)
            assert torch.all(state["guidance_scale"] == 2.0)
        else:
            seen["outside"] += 1
            assert torch.equal(eps, preds["uncond"])
            assert torch.equal(state["guidance_scale"], torch.zeros(shape[0], dtype=torch.float64))
        state = observe(method, step, preds["uncond"], preds["uncond"], preds, state)
    assert seen == {"inside": 5, "outside": 4}


def test_defaults_and_config():
    p = AdaptiveProjectedGuidance.Params()
    assert (p.scale, p.eta, p.norm_threshold, p.momentum, p.t_low, p.t_high) == (1.0, 0.0, 15.0, 0.0, 0, 999)
    assert apg().config() == {"method": "apg", "params": {"scale": 1.0, "eta": 0.0, "norm_threshold": 15.0, "momentum": 0.0}}
    assert apg(t_high=500).config()["params"]["t_high"] == 500
    assert AdaptiveProjectedGuidance.name == "apg" and AdaptiveProjectedGuidance.needs == ("uncond", "neg")
    assert "2410.02416" in AdaptiveProjectedGuidance.reference


@pytest.mark.parametrize("params,word", [
    ({"eta": float("nan")}, "eta"),
    ({"eta": float("inf")}, "eta"),
    ({"norm_threshold": -1.0}, "norm_threshold"),
    ({"norm_threshold": float("inf")}, "norm_threshold"),
    ({"norm_threshold": float("nan")}, "norm_threshold"),
    ({"momentum": 1.0}, "momentum"),
    ({"momentum": -1.0}, "momentum"),
    ({"momentum": float("nan")}, "momentum"),
    ({"scale": float("nan")}, "scale"),
    ({"t_low": 600, "t_high": 500}, "t_low"),
])
def test_bad_parameters_raise_value_error_naming_them(params, word):
    with pytest.raises(ValueError, match=word):
        apg(**params)
