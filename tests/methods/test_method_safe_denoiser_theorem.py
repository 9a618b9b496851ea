"""`safe-denoiser-theorem` (the closed form of the Theorem, kept-data odds) against Kim et al. 2025 (arXiv 2502.08011), transcribed here in x0 space.

Theorem 3.2 (Eqs. 4-5):  E_safe[x0|x_t] = E_data[x0|x_t] + beta* (E_data[x0|x_t] - E_unsafe[x0|x_t]),
                         beta*(x_t) = Z_unsafe p_unsafe,t(x_t) / (Z_safe p_safe,t(x_t)).
Eq. 6:  E_unsafe[x0|x_t] ~ sum_n x_n q_t(x_t|x_n) / sum_m q_t(x_t|x_m),  q_t(x_t|x) = N(x_t; sqrt(abar) x, (1 - abar) I).
Eq. 7 / Algorithm 1:  beta* ~ eta * beta, only on critical timesteps, and not where the weight is below beta_t.
Denoised estimates and noise predictions are related by x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar).
The method sees eps_u = preds["uncond"], eps_B = preds["negation"] and negation_logit = log beta*; here
beta = eta * min(exp(negation_logit), beta_max), and 0 where exp(negation_logit) < threshold.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from negguide.bench.tasks import get_task
from negguide.datasets.gmm import GMM1D, GMM2D, ExactDenoiser, RemovalProblem
from negguide.methods import BenchError, Schedule
from negguide.methods.registry import build_params
from negguide.methods.safe_denoiser_theorem import SafeDenoiserTheorem as SafeDenoiser, SafeDenoiserTheoremParams as SafeDenoiserParams
from negguide.methods.base import guide, init_state, observe

CHAIN = Schedule().steps(50)
TOL = {"rtol": 1e-12, "atol": 1e-12}


def _randn(gen: torch.Generator, shape) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def paper_safe_eps(step, x, eps_u, eps_b, logit, eta, beta_max=math.inf, threshold=0.0):
    """Eq. 4 in x0 space with beta* = exp(logit) (Eq. 5), the weight eta * beta* (Eq. 7), back to eps."""
    a, s = math.sqrt(step.alpha_bar), math.sqrt(1.0 - step.alpha_bar)
    x0_data, x0_unsafe = (x - s * eps_u) / a, (x - s * eps_b) / a
    beta_star = [min(math.exp(v), beta_max) for v in logit.tolist()]
    beta = torch.tensor([0.0 if b < threshold else eta * b for b in beta_star], dtype=torch.float64)
    beta = beta.reshape(-1, *([1] * (x.dim() - 1)))
    x0_safe = x0_data + beta * (x0_data - x0_unsafe)
    return (x - a * x0_safe) / s


@pytest.mark.parametrize("shape", [(3, 1, 4, 4), (5, 2)])
@pytest.mark.parametrize("params", [{}, {"scale": 2.5, "beta_max": math.inf}, {"scale": 0.5, "beta_max": 4.0, "threshold": 0.3}])
def test_guide_is_eq4_over_the_whole_chain(shape, params):
    """Stateless: the weight at each step is a function of that step's predictions only."""
    gen = torch.Generator().manual_seed(41)
    method = SafeDenoiser(SafeDenoiserParams(**params))
    p = method.params
    state = init_state(method, shape[0], _randn(gen, shape))
    for step in CHAIN:
        x = _randn(gen, shape)
        preds = {"uncond": _randn(gen, shape), "negation": _randn(gen, shape), "negation_logit": 3.0 * _randn(gen, (shape[0],))}
        eps, state = guide(method, step, preds, state)
        want = paper_safe_eps(step, x, preds["uncond"], preds["negation"], preds["negation_logit"], p.scale, p.beta_max, p.threshold)
        torch.testing.assert_close(eps, want, rtol=1e-10, atol=1e-10)
        odds = torch.exp(preds["negation_logit"]).clamp(max=p.beta_max)
        torch.testing.assert_close(state["guidance_scale"], torch.where(odds < p.threshold, 0.0, p.scale * odds), **TOL)
        torch.testing.assert_close(state["posterior"], torch.sigmoid(preds["negation_logit"]), **TOL)
        state = observe(method, step, x, x, preds, state)
    assert set(state) == {"guidance_scale", "posterior"}


def test_defaults_window_and_extreme_logits():
    assert SafeDenoiserParams() == SafeDenoiserParams(scale=1.0, beta_max=99.0, threshold=0.0, t_low=0, t_high=999)
    assert SafeDenoiser.needs == ("uncond", "negation", "negation_logit")
    method = SafeDenoiser(SafeDenoiserParams(t_low=700))
    gen = torch.Generator().manual_seed(42)
    preds = {"uncond": _randn(gen, (3, 2)), "negation": _randn(gen, (3, 2)),
             "negation_logit": torch.tensor([1e6, -1e6, 0.0], dtype=torch.float64)}  # a kernel estimate late in the chain
    inside, state = guide(method, CHAIN[0], preds, init_state(method, 3, preds["uncond"]))
    torch.testing.assert_close(state["guidance_scale"], torch.tensor([99.0, 0.0, 1.0], dtype=torch.float64), **TOL)
    assert torch.isfinite(inside).all()
    outside, state = guide(method, CHAIN[-1], preds, state)  # t = 0 < t_low: the unguided prediction
    assert torch.equal(outside, preds["uncond"]) and torch.equal(state["guidance_scale"], torch.zeros(3, dtype=torch.float64))
    params = build_params(SafeDenoiser, {"scale": "2", "beta_max": "inf", "threshold": "0.1"})
    assert (params.scale, params.beta_max, params.threshold) == (2.0, math.inf, 0.1)
    for bad in ({"beta_max": "0"}, {"threshold": "-1"}, {"beta_max": "nan"}):
        with pytest.raises(BenchError):
            build_params(SafeDenoiser, bad)


# ---- the gmm tasks: the negation set is the exact forbidden mode ---------------------------------

def _diffused_eps(mean, std, x, abar):
    """eps of one Gaussian mode N(mu, std^2 I) diffused to abar: sqrt(1 - abar) (x - sqrt(abar) mu) / v."""
    v = 1.0 - abar + abar * std**2
    return math.sqrt(1.0 - abar) * (x - math.sqrt(abar) * torch.tensor(mean, dtype=torch.float64)) / v


def _log_mode(mean, std, x, abar):
    v = 1.0 - abar + abar * std**2
    d = x.shape[1]
    return -((x - math.sqrt(abar) * torch.tensor(mean, dtype=torch.float64)) ** 2).sum(1) / (2 * v) - 0.5 * d * math.log(2 * math.pi * v)


@pytest.mark.parametrize("mixture,removed", [(GMM1D, 1), (GMM1D, 0), (GMM2D, 3)])
def test_gmm_negation_predictions_are_the_forbidden_modes(mixture, removed):
    gen = torch.Generator().manual_seed(43)
    denoiser = ExactDenoiser(RemovalProblem(mixture, removed))
    for step in [CHAIN[i] for i in (0, 15, 30, 45, 49)]:
        x = 3.0 * _randn(gen, (64, mixture.dim))
        preds = denoiser(x, step, ("uncond", "neg", "remember", "posterior_logit", "negation", "negation_logit"))
        eps_forbidden = _diffused_eps(mixture.means[removed], mixture.stds[removed], x, step.alpha_bar)
        torch.testing.assert_close(preds["negation"], eps_forbidden, **TOL)
        assert torch.equal(preds["negation"], preds["neg"]) and torch.equal(preds["negation_logit"], preds["posterior_logit"])
        logs = torch.stack([math.log(w) + _log_mode(m, s, x, step.alpha_bar) for w, m, s in zip(mixture.weights, mixture.means, mixture.stds)])
        rest = torch.cat([logs[:removed], logs[removed + 1:]])
        torch.testing.assert_close(preds["negation_logit"], logs[removed] - torch.logsumexp(rest, 0), rtol=1e-10, atol=1e-10)
        # Eq. 4 with the exact beta* is the safe (to-remember) denoiser itself. Where beta* is huge (deep in
        # the forbidden mode) the information sits in eps_u - eps_B ~ (1 - P), lost to rounding: compare elsewhere.
        eps, _ = guide(SafeDenoiser(SafeDenoiserParams(beta_max=math.inf)), step, preds, {})
        fine = preds["negation_logit"] < math.log(1e4)
        assert fine.sum() >= 32
        torch.testing.assert_close(eps[fine], preds["remember"][fine], rtol=1e-8, atol=1e-8)


def test_tasks_declare_the_new_predictions():
    for name in ("gmm1d-remove-1", "gmm2d-remove-0", "mnist-pixel-remove-0"):
        task = get_task(name)
        assert {"uncond", "neg", "negation", "negation_logit", "negation_set"} <= set(task.predictions)
        assert task.version == "1"
    assert get_task("gmm1d-remove-1").predictions[:4] == ("uncond", "neg", "remember", "posterior_logit")


# ---- MNIST: a kernel over real digits of the removed class, never a judge test digit -------------

def test_mnist_negation_set_and_predictions():
    from negguide.bench.run.shards import runtime_for
    from negguide.datasets.mnist import load_mnist, mnist_splits, negation_split, to_model_range

    removed = 7
    images, labels = load_mnist()
    split, test = negation_split(removed), mnist_splits()["classifier_test"]
    assert len(split["negation"]) == 400 and (labels[split["negation"]] == removed).all()
    assert len(split["kept"]) == 3600 and (labels[split["kept"]] != removed).all()
    assert not np.intersect1d(np.concatenate([split["negation"], split["kept"]]), test).size

    runtime = runtime_for(get_task(f"mnist-pixel-remove-{removed}"), torch.device("cpu"))
    kernel = runtime.denoiser.negation
    assert torch.equal(kernel.negation, to_model_range(images[split["negation"]]).reshape(400, -1).double())
    judge_digits = {bytes(d) for d in images[test]}
    used = np.rint((torch.cat([kernel.negation, kernel.kept]).numpy() + 1.0) * 127.5).astype(np.uint8).reshape(-1, 28, 28)
    assert not any(bytes(d) in judge_digits for d in used)

    calls = []
    hook = runtime.denoiser.model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    gen = torch.Generator().manual_seed(44)
    x = torch.randn((4, 1, 28, 28), generator=gen)
    try:
        by_step = {step: runtime.denoiser(x, step, ("negation", "negation_logit")) for step in (CHAIN[0], CHAIN[30], CHAIN[-1])}
        assert calls == []  # the negation predictions never run the UNet
        mixed = runtime.denoiser(x[:2], CHAIN[30], ("uncond", "negation_logit", "negation"))
    finally:
        hook.remove()
    assert calls == [2] and list(mixed) == ["uncond", "negation_logit", "negation"]  # one forward, uncond only
    for step, preds in by_step.items():
        assert preds["negation"].shape == x.shape and preds["negation"].dtype == torch.float32
        assert preds["negation_logit"].shape == (4,) and all(torch.isfinite(v).all() for v in preds.values())
        # Direct: Gaussian kernel weights over the negation set, and the log ratio of the two kernel sums.
        a, v = math.sqrt(step.alpha_bar), 1.0 - step.alpha_bar
        flat = x.reshape(4, -1).double()
        log_k_neg = -torch.cdist(flat, a * kernel.negation) ** 2 / (2 * v)
        log_k_kept = -torch.cdist(flat, a * kernel.kept) ** 2 / (2 * v)
        x0 = torch.softmax(log_k_neg, 1) @ kernel.negation
        eps = ((flat - a * x0) / math.sqrt(v)).reshape(x.shape).float()
        torch.testing.assert_close(preds["negation"], eps, rtol=1e-4, atol=1e-4)
        logit = (torch.logsumexp(log_k_neg, 1) - torch.logsumexp(log_k_kept, 1)).float()
        torch.testing.assert_close(preds["negation_logit"], logit, rtol=1e-5, atol=1e-3 * max(1.0, logit.abs().max().item()))
    torch.testing.assert_close(by_step[CHAIN[0]]["negation_logit"], torch.full((4,), math.log(400 / 3600)), rtol=0, atol=0.3)  # t = 999: the prior odds
