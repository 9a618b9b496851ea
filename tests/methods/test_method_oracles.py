"""`dng-exact` and `cfg-remember` on exact Gaussian mixtures (paper Appendix B), transcribed here.

A mixture sum_i c_i N(mu_i, s_i^2 I) diffuses to sum_i c_i N(sqrt(abar_t) mu_i, (1 - abar_t + abar_t s_i^2) I);
the removed (to-forget) modes give p_f, the others p_r, and the posterior of the removed modes is
Eq. 16:  p(c=0|x,t) = p(c=0) p_f(x,t) / p_t(x).
Eq. 10 (DNG, exact posterior):  s - lam p/(1-p) (s_f - s);   Eq. 5 (CFG to remember):  s + lam (s_r - s);
Eq. 17: the two are equal. Noise predictions are eps = -sqrt(1 - abar_t) s (Sec. 2.1).
"""
from __future__ import annotations

import math

import pytest
import torch

from negguide.datasets.gmm import GMM1D, GMM2D, ExactDenoiser, GaussianMixture, RemovalProblem
from negguide.methods import Schedule, load_method
from negguide.methods.base import guide

CHAIN = Schedule().steps(50)
TOL = {"rtol": 1e-12, "atol": 1e-12}
STEPS = [CHAIN[i] for i in (0, 10, 25, 35, 42, 46)]


def _log_gauss(x: torch.Tensor, mean: torch.Tensor, var: float) -> torch.Tensor:
    d = x.shape[1]
    return -((x - mean) ** 2).sum(1) / (2.0 * var) - 0.5 * d * math.log(2.0 * math.pi * var)


def diffused_modes(mixture: GaussianMixture, modes, abar: float):
    """(weight, mean, variance) of each listed mode of the mixture diffused to cumulative product abar."""
    return [(mixture.weights[i], math.sqrt(abar) * torch.tensor(mixture.means[i], dtype=torch.float64),
             1.0 - abar + abar * mixture.stds[i] ** 2) for i in modes]


def log_density(modes, x: torch.Tensor) -> torch.Tensor:
    total = sum(w for w, _, _ in modes)
    return torch.logsumexp(torch.stack([math.log(w / total) + _log_gauss(x, m, v) for w, m, v in modes]), dim=0)


def score(modes, x: torch.Tensor) -> torch.Tensor:
    """grad log of the renormalised mixture of `modes`: responsibility-weighted Gaussian scores."""
    total = sum(w for w, _, _ in modes)
    logs = torch.stack([math.log(w / total) + _log_gauss(x, m, v) for w, m, v in modes])  # [K, B]
    resp = torch.softmax(logs, dim=0)
    return sum(resp[k][:, None] * (-(x - m) / v) for k, (w, m, v) in enumerate(modes))


def exact_case(mixture: GaussianMixture, removed: int, step, x: torch.Tensor):
    everyone = list(range(len(mixture.weights)))
    rest = [i for i in everyone if i != removed]
    all_m, forget_m, rest_m = (diffused_modes(mixture, idx, step.alpha_bar) for idx in (everyone, [removed], rest))
    sigma = math.sqrt(1.0 - step.alpha_bar)
    s, s_f, s_r = score(all_m, x), score(forget_m, x), score(rest_m, x)
    prior = mixture.weights[removed] / sum(mixture.weights)
    # Eq. 16 for the removed modes and for the rest; their ratio is the odds p/(1-p) without cancellation.
    log_post = math.log(prior) + log_density(forget_m, x) - log_density(all_m, x)
    log_rest = math.log(1.0 - prior) + log_density(rest_m, x) - log_density(all_m, x)
    return {"s": s, "s_f": s_f, "s_r": s_r, "p": torch.exp(log_post), "odds": torch.exp(log_post - log_rest), "sigma": sigma}


def points(gen: torch.Generator, dim: int, n: int = 64) -> torch.Tensor:
    return 3.0 * torch.randn((n, dim), generator=gen, dtype=torch.float64)


CASES = [(GMM1D, 0), (GMM1D, 2), (GMM2D, 0), (GMM2D, 3)]


@pytest.mark.parametrize("mixture,removed", CASES)
def test_exact_denoiser_gives_the_appendix_b_quantities(mixture, removed):
    """The predictions the oracles are fed are the closed-form ones (the premise of Eq. 17)."""
    gen = torch.Generator().manual_seed(51)
    denoiser = ExactDenoiser(RemovalProblem(mixture, removed))
    for step in STEPS:
        x = points(gen, mixture.dim)
        ref = exact_case(mixture, removed, step, x)
        preds = denoiser(x, step, ("uncond", "neg", "remember", "posterior_logit"))
        torch.testing.assert_close(preds["uncond"], -ref["sigma"] * ref["s"], **TOL)
        torch.testing.assert_close(preds["neg"], -ref["sigma"] * ref["s_f"], **TOL)
        torch.testing.assert_close(preds["remember"], -ref["sigma"] * ref["s_r"], **TOL)
        torch.testing.assert_close(torch.sigmoid(preds["posterior_logit"]), ref["p"], **TOL)


# Where the removed modes' posterior saturates (p -> 1, odds up to 1e26 late in the chain), eps_n - eps_u is a
# difference of two nearly equal numbers whose float64 rounding the odds multiply: Eq. 10 cannot be evaluated to
# 1e-12 there from (eps_u, eps_n, logit), by the method or by any transcription. The 1e-12 comparisons use the
# points with odds <= ODDS_MAX; `test_eq17_rounding_is_bounded_by_the_odds` covers the rest.
ODDS_MAX = 10.0


@pytest.mark.parametrize("lam", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("mixture,removed", CASES)
def test_dng_exact_is_eq10_and_cfg_remember_is_eq5(mixture, removed, lam):
    gen = torch.Generator().manual_seed(52)
    denoiser = ExactDenoiser(RemovalProblem(mixture, removed))
    dng, cfg = load_method("dng-exact", {"scale": lam}), load_method("cfg-remember", {"scale": lam})
    compared = likely_removed = 0
    for step in STEPS:
        x = points(gen, mixture.dim)
        ref = exact_case(mixture, removed, step, x)
        preds = denoiser(x, step, ("uncond", "neg", "remember", "posterior_logit"))
        odds = ref["odds"]
        s_dng = ref["s"] - lam * odds[:, None] * (ref["s_f"] - ref["s"])  # Eq. 10
        s_cfg = ref["s"] + lam * (ref["s_r"] - ref["s"])  # Eq. 5 with c+ = to-remember
        eps_dng, state = guide(dng, step, preds, {})
        ok = odds <= ODDS_MAX
        torch.testing.assert_close(eps_dng[ok], (-ref["sigma"] * s_dng)[ok], **TOL)
        torch.testing.assert_close(state["guidance_scale"], lam * odds, **TOL)  # every point
        torch.testing.assert_close(state["posterior"], ref["p"], **TOL)
        eps_cfg, state = guide(cfg, step, {"uncond": preds["uncond"], "remember": preds["remember"]}, {})
        torch.testing.assert_close(eps_cfg, -ref["sigma"] * s_cfg, **TOL)
        assert torch.all(state["guidance_scale"] == lam)
        compared += int(ok.sum())
        likely_removed += int((ok & (ref["p"] > 0.5)).sum())
    assert compared >= 100 and likely_removed >= 3


@pytest.mark.parametrize("lam", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("mixture,removed", CASES)
def test_eq17_negative_guidance_with_exact_posterior_equals_cfg_to_remember(mixture, removed, lam):
    gen = torch.Generator().manual_seed(53)
    denoiser = ExactDenoiser(RemovalProblem(mixture, removed))
    dng, cfg = load_method("dng-exact", {"scale": lam}), load_method("cfg-remember", {"scale": lam})
    moved = 0.0
    for step in STEPS:
        x = points(gen, mixture.dim)
        preds = denoiser(x, step, ("uncond", "neg", "remember", "posterior_logit"))
        eps_dng, _ = guide(dng, step, preds, {})
        eps_cfg, _ = guide(cfg, step, preds, {})
        ok = torch.exp(preds["posterior_logit"]) <= ODDS_MAX
        torch.testing.assert_close(eps_dng[ok], eps_cfg[ok], **TOL)
        moved = max(moved, float((eps_cfg[ok] - preds["uncond"][ok]).abs().max()))
    assert moved > 0.1  # the identity is not vacuous: the guidance changes the prediction


@pytest.mark.parametrize("mixture,removed", CASES)
def test_eq17_rounding_is_bounded_by_the_odds(mixture, removed):
    """At every point, saturated ones included: |dng-exact - cfg-remember| <= 1e-12 (1 + lam odds)(1 + |eps|)."""
    gen = torch.Generator().manual_seed(54)
    denoiser = ExactDenoiser(RemovalProblem(mixture, removed))
    lam = 2.0
    dng, cfg = load_method("dng-exact", {"scale": lam}), load_method("cfg-remember", {"scale": lam})
    for step in STEPS:
        x = points(gen, mixture.dim)
        preds = denoiser(x, step, ("uncond", "neg", "remember", "posterior_logit"))
        eps_dng, state = guide(dng, step, preds, {})
        eps_cfg, _ = guide(cfg, step, preds, {})
        amp = (1.0 + state["guidance_scale"])[:, None]
        assert torch.all((eps_dng - eps_cfg).abs() <= 1e-12 * amp * (1.0 + eps_cfg.abs()))


def test_needs():
    assert load_method("dng-exact", {}).needs == ("uncond", "neg", "posterior_logit")
    assert load_method("cfg-remember", {}).needs == ("uncond", "remember")
