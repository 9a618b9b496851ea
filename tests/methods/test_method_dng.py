"""`dng` against the paper's Algorithms 1 and 2, transcribed here, over the whole 50-step chain.

Algorithm 1:  p(c-|x_T) = p0,  lambda = lam0 p / (1 - p);  each step
              eps_guided = eps(x_t) - lambda (eps_f(x_t) - eps(x_t))         (Eq. 10 in eps form)
              x_{t-1} = DDPM step;  p <- ComputePosterior(...);  lambda <- lam0 p / (1 - p)
Algorithm 2:  mu(x_t)   = (x_t - (1 - alpha_t) / sqrt(1 - abar_t) eps(x_t)) / sqrt(alpha_t)   (also for eps_f)
              p <- p exp(-tau / (2 sigma^2) (|x_{t-1} - mu_f|^2 - |x_{t-1} - mu|^2) + delta / (2 sigma^2))
              p <- clamp(p, p_min, p_max)
sigma^2 is 1 - alpha_t in Algorithm 2 (`variance=beta`) and the DDPM posterior variance
(1 - abar_{t-1}) / (1 - abar_t) beta_t in the reference code (`variance=beta_tilde`, the default).
On a respaced chain alpha_t = abar_t / abar_prev. The posterior used at a step is the one computed after
the previous step (the paper's staggered update). At the last step beta_tilde = 0: no update.
"""
from __future__ import annotations

import math

import pytest
import torch

from negguide.methods import Schedule, load_method
from negguide.methods.base import guide, init_state, observe

CHAIN = Schedule().steps(50)
TOL = {"rtol": 1e-12, "atol": 1e-12}


def _randn(gen: torch.Generator, shape) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def constants(step, variance: str) -> tuple[float, float, float]:
    """alpha_t, abar_t and sigma_t^2 of one respaced transition, from the two cumulative products."""
    abar, abar_prev = step.alpha_bar, step.alpha_bar_prev
    alpha = abar / abar_prev
    beta = 1.0 - alpha
    sigma2 = beta if variance == "beta" else (1.0 - abar_prev) / (1.0 - abar) * beta
    return alpha, abar, sigma2


class PaperDNG:
    """Algorithms 1-2 with the posterior held as a probability, as in Algorithm 2."""

    def __init__(self, lam0, prior, tau, delta, p_min, p_max, variance, batch):
        self.lam0, self.tau, self.delta, self.p_min, self.p_max, self.variance = lam0, tau, delta, p_min, p_max, variance
        self.p = torch.full((batch,), prior, dtype=torch.float64)

    def lam(self) -> torch.Tensor:
        return self.lam0 * self.p / (1.0 - self.p)

    def guide(self, eps_u, eps_f):
        lam = self.lam().reshape(-1, *([1] * (eps_u.dim() - 1)))
        return eps_u - lam * (eps_f - eps_u)

    def compute_posterior(self, step, x_t, x_prev, eps_u, eps_f):
        alpha, abar, sigma2 = constants(step, self.variance)
        if sigma2 == 0.0:
            return  # no noise was added: the Gaussian likelihood ratio does not exist
        mu_f = (x_t - (1.0 - alpha) / math.sqrt(1.0 - abar) * eps_f) / math.sqrt(alpha)
        mu_u = (x_t - (1.0 - alpha) / math.sqrt(1.0 - abar) * eps_u) / math.sqrt(alpha)
        d_f = ((x_prev - mu_f) ** 2).reshape(len(x_t), -1).sum(1)
        d_u = ((x_prev - mu_u) ** 2).reshape(len(x_t), -1).sum(1)
        # p * exp(a), evaluated as exp(log p + a) so that huge |a| late in the chain cannot give inf * 0.
        p = torch.exp(torch.log(self.p) - self.tau / (2.0 * sigma2) * (d_f - d_u) + self.delta / (2.0 * sigma2))
        self.p = torch.clamp(p, min=self.p_min, max=self.p_max)


def chain_inputs(gen, shape, pull: torch.Tensor, variance: str):
    """Per step: eps_u, eps_f, and an x_prev drawn around mu_u + pull (mu_f - mu_u), with the step's noise.

    pull = 1 lands on the negative mean (the posterior rises to p_max), -1 beyond the unconditional one, away from
    the negative mean (it falls to p_min); around 0.5 the posterior wanders between the clamps."""
    x = _randn(gen, shape)
    steps = []
    for step in CHAIN:
        eps_u, eps_f = _randn(gen, shape), _randn(gen, shape)
        alpha, abar, sigma2 = constants(step, variance)
        c = (1.0 - alpha) / math.sqrt(1.0 - abar) / math.sqrt(alpha)
        mu_u, mu_f = x / math.sqrt(alpha) - c * eps_u, x / math.sqrt(alpha) - c * eps_f
        w = pull.reshape(-1, *([1] * (len(shape) - 1)))
        x_prev = mu_u + w * (mu_f - mu_u) + math.sqrt(sigma2) * _randn(gen, shape)
        steps.append((step, x, x_prev, eps_u, eps_f))
        x = x_prev
    return steps


PARAMS = {"scale": 5.0, "prior": 0.25, "tau": 0.25, "delta": 2e-3, "p_min": 1e-6, "p_max": 0.99}


@pytest.mark.parametrize("shape", [(4, 1, 4, 4), (4, 2)])
@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_posterior_recursion_and_guidance_over_the_chain(variance, shape):
    gen = torch.Generator().manual_seed(41)
    method = load_method("dng", {**PARAMS, "variance": variance})
    paper = PaperDNG(PARAMS["scale"], PARAMS["prior"], PARAMS["tau"], PARAMS["delta"], PARAMS["p_min"], PARAMS["p_max"], variance, shape[0])
    inputs = chain_inputs(gen, shape, torch.tensor([1.0, -1.0, 0.5, 0.55], dtype=torch.float64), variance)
    state = init_state(method, shape[0], inputs[0][1])
    torch.testing.assert_close(state["guidance_scale"], paper.lam(), **TOL)
    history = []
    for step, x, x_prev, eps_u, eps_f in inputs:
        lam_before = paper.lam()
        eps, state = guide(method, step, {"uncond": eps_u, "neg": eps_f}, state)
        torch.testing.assert_close(eps, paper.guide(eps_u, eps_f), **TOL)  # uses the previous step's posterior
        torch.testing.assert_close(method.trace(state)["guidance_scale"], lam_before, **TOL)
        state = observe(method, step, x, x_prev, {"uncond": eps_u, "neg": eps_f}, state)
        paper.compute_posterior(step, x, x_prev, eps_u, eps_f)
        torch.testing.assert_close(state["posterior"], paper.p, **TOL)
        torch.testing.assert_close(state["log_posterior"], torch.log(paper.p), **TOL)
        torch.testing.assert_close(state["guidance_scale"], paper.lam(), **TOL)
        history.append(paper.p.clone())
    ps = torch.stack(history)
    # The recursion was exercised in every regime: both clamps reached and values strictly between.
    assert torch.isclose(ps, torch.tensor(PARAMS["p_max"], dtype=torch.float64), rtol=1e-14, atol=0).any()
    assert torch.isclose(ps, torch.tensor(PARAMS["p_min"], dtype=torch.float64), rtol=1e-14, atol=0).any()
    assert ((ps > 1.01 * PARAMS["p_min"]) & (ps < 0.98 * PARAMS["p_max"])).sum() >= 10
    assert (ps[0] != PARAMS["prior"]).all()


def test_last_step_is_skipped_with_beta_tilde_and_applied_with_beta():
    gen = torch.Generator().manual_seed(42)
    last = CHAIN[-1]
    assert last.t == 0 and last.alpha_bar_prev == 1.0 and constants(last, "beta_tilde")[2] == 0.0
    shape = (3, 1, 4, 4)
    x, x_prev, eps_u, eps_f = (_randn(gen, shape) for _ in range(4))
    for variance in ("beta_tilde", "beta"):
        method = load_method("dng", {**PARAMS, "variance": variance, "prior": 0.3})
        paper = PaperDNG(5.0, 0.3, 0.25, 2e-3, 1e-6, 0.99, variance, 3)
        state = init_state(method, 3, x)
        new = observe(method, last, x, x_prev, {"uncond": eps_u, "neg": eps_f}, state)
        paper.compute_posterior(last, x, x_prev, eps_u, eps_f)
        torch.testing.assert_close(new["posterior"], paper.p, **TOL)
        if variance == "beta_tilde":
            assert torch.equal(new["log_posterior"], state["log_posterior"])
            assert torch.equal(new["guidance_scale"], state["guidance_scale"])
        else:
            assert not torch.equal(new["log_posterior"], state["log_posterior"])


@pytest.mark.parametrize("prior,expected", [(0.995, 0.99), (0.3, 0.3), (1e-8, 1e-6)])
def test_clamp_to_p_min_p_max_after_an_update(prior, expected):
    """With tau = delta = 0 the update adds nothing: only the clamp acts, and the prior itself is not clamped."""
    gen = torch.Generator().manual_seed(43)
    method = load_method("dng", {"scale": 2.0, "prior": prior, "tau": 0.0, "delta": 0.0, "p_min": 1e-6, "p_max": 0.99})
    x = _randn(gen, (2, 2))
    state = init_state(method, 2, x)
    torch.testing.assert_close(state["guidance_scale"], torch.full((2,), 2.0 * prior / (1.0 - prior), dtype=torch.float64), **TOL)
    state = observe(method, CHAIN[3], x, _randn(gen, (2, 2)), {"uncond": _randn(gen, (2, 2)), "neg": _randn(gen, (2, 2))}, state)
    want = torch.full((2,), expected, dtype=torch.float64)
    torch.testing.assert_close(state["posterior"], want, **TOL)
    torch.testing.assert_close(state["guidance_scale"], 2.0 * want / (1.0 - want), **TOL)


def test_guidance_is_staggered_one_step():
    """The posterior computed from x_{t-1} guides the next step, not the one that produced x_{t-1}."""
    gen = torch.Generator().manual_seed(44)
    shape = (2, 1, 4, 4)
    method = load_method("dng", PARAMS)
    x = _randn(gen, shape)
    preds = {"uncond": _randn(gen, shape), "neg": _randn(gen, shape)}
    state = init_state(method, 2, x)
    eps0, state0 = guide(method, CHAIN[0], preds, state)
    lam_prior = 5.0 * 0.25 / 0.75
    torch.testing.assert_close(eps0, preds["uncond"] - lam_prior * (preds["neg"] - preds["uncond"]), **TOL)
    state1 = observe(method, CHAIN[0], x, _randn(gen, shape), preds, state0)
    eps0_again, _ = guide(method, CHAIN[0], preds, state0)
    assert torch.equal(eps0, eps0_again)  # step does not look at x or x_prev
    eps1, _ = guide(method, CHAIN[1], preds, state1)
    lam1 = state1["guidance_scale"].reshape(-1, 1, 1, 1)
    assert not torch.allclose(state1["guidance_scale"], torch.tensor(lam_prior, dtype=torch.float64))
    torch.testing.assert_close(eps1, preds["uncond"] - lam1 * (preds["neg"] - preds["uncond"]), **TOL)


def test_window_uses_unguided_outside_while_the_posterior_keeps_evolving():
    gen = torch.Generator().manual_seed(45)
    shape = (4, 2)
    t_low, t_high = 326, 714  # steps 14..33 of the 50-step chain
    method = load_method("dng", {**PARAMS, "t_low": t_low, "t_high": t_high})
    paper = PaperDNG(5.0, 0.25, 0.25, 2e-3, 1e-6, 0.99, "beta_tilde", shape[0])
    inputs = chain_inputs(gen, shape, torch.tensor([0.9, 0.1, 0.5, 0.45], dtype=torch.float64), "beta_tilde")
    state = init_state(method, shape[0], inputs[0][1])
    for step, x, x_prev, eps_u, eps_f in inputs:
        preds = {"uncond": eps_u, "neg": eps_f}
        eps, state = guide(method, step, preds, state)
        if t_low <= step.t <= t_high:
            # The first step inside the window uses the posterior evolved outside it, not the prior.
            torch.testing.assert_close(eps, paper.guide(eps_u, eps_f), **TOL)
            torch.testing.assert_close(state["guidance_scale"], paper.lam(), **TOL)
        else:
            assert torch.equal(eps, eps_u)
            assert torch.equal(state["guidance_scale"], torch.zeros(shape[0], dtype=torch.float64))
        state = observe(method, step, x, x_prev, preds, state)
        paper.compute_posterior(step, x, x_prev, eps_u, eps_f)
        torch.testing.assert_close(state["posterior"], paper.p, **TOL)


def test_defaults_are_the_paper_mnist_setting_and_reference_variance():
    p = load_method("dng", {}).params
    assert (p.scale, p.prior, p.tau, p.delta, p.p_min, p.p_max, p.variance) == (5.0, 0.25, 0.25, 0.0, 1e-6, 0.99, "beta_tilde")
