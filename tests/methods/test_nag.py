"""`nag` (Normalized Attention Guidance, Chen et al. 2025, arXiv:2505.21179): the attention-space formula
against a transcription of the paper's equations written here, its parameters, and the refusal of every
task without cross-attention layers. The Stable Diffusion path is tested in tests/tasks/test_task_t2i.py.

The paper, per token of a cross-attention output (Z+ with the positive prompt, Z- with the negative one):

    Z~ = Z+ + phi (Z+ - Z-)
    Z^ = Z~ min(||Z~||_1 / ||Z+||_1, tau) / (||Z~||_1 / ||Z+||_1)
    Z  = alpha Z^ + (1 - alpha) Z+
"""
from __future__ import annotations

import itertools

import pytest
import torch

from negguide.bench.cli import main as bench_main
from negguide.methods import BenchError, MethodError, load_method
from negguide.methods.nag import AttentionGuided, NAGParams, NormalizedAttentionGuidance, normalized_attention
from negguide.methods.registry import method_card
from negguide.methods.schedule import Schedule
from negguide.results.store import Store
from negguide.methods.base import guide

CHAIN = Schedule().steps(20)
TOL = {"rtol": 1e-12, "atol": 1e-12}


def paper_nag(z_pos: torch.Tensor, z_neg: torch.Tensor, phi: float, tau: float, alpha: float) -> torch.Tensor:
    """The paper's three equations, one token (one vector of channels) at a time."""
    out = torch.empty_like(z_pos)
    for index in itertools.product(*(range(n) for n in z_pos.shape[:-1])):
        zp, zn = z_pos[index], z_neg[index]
        z_tilde = zp + phi * (zp - zn)
        ratio = torch.linalg.vector_norm(z_tilde, ord=1) / torch.linalg.vector_norm(zp, ord=1)
        z_hat = z_tilde * torch.minimum(ratio, torch.tensor(tau, dtype=ratio.dtype)) / ratio
        out[index] = alpha * z_hat + (1 - alpha) * zp
    return out


def features(seed: int, shape=(2, 6, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64), torch.randn(shape, generator=gen, dtype=torch.float64)


def l1(z: torch.Tensor) -> torch.Tensor:
    return z.abs().sum(-1)


# ---- the formula -------------------------------------------------------------------------------

@pytest.mark.parametrize("phi, tau, alpha", [(2.0, 2.5, 0.5), (4.0, 1.5, 0.25), (0.7, 3.0, 1.0), (5.0, 1.0, 0.8), (-0.5, 2.5, 0.5)])
def test_formula_matches_the_papers_equations(phi, tau, alpha):
    z_pos, z_neg = features(1)
    torch.testing.assert_close(normalized_attention(z_pos, z_neg, phi, tau, alpha), paper_nag(z_pos, z_neg, phi, tau, alpha), **TOL)


def test_clipping_is_per_token_active_where_the_ratio_exceeds_tau():
    z_pos, z_neg = features(2, (1, 40, 8))
    phi, tau = 2.0, 2.5
    ratio = l1(z_pos + phi * (z_pos - z_neg)) / l1(z_pos)
    clipped = ratio > tau
    assert clipped.any() and (~clipped).any()  # both cases occur among these tokens
    z_hat = normalized_attention(z_pos, z_neg, phi, tau, alpha=1.0)
    torch.testing.assert_close(l1(z_hat)[clipped], tau * l1(z_pos)[clipped], **TOL)  # ||Z^||_1 = tau ||Z+||_1
    torch.testing.assert_close(z_hat[~clipped], (z_pos + phi * (z_pos - z_neg))[~clipped], **TOL)  # Z^ = Z~


def test_inactive_clipping_is_linear_extrapolation():
    z_pos, z_neg = features(3)
    phi, alpha = 1.5, 0.3
    got = normalized_attention(z_pos, z_neg, phi, 1e9, alpha)
    torch.testing.assert_close(got, z_pos + alpha * phi * (z_pos - z_neg), **TOL)


def test_norms_are_over_channels_per_token_not_over_tokens():
    """Scaling one token's Z+ and Z- scales that token's output alone (a norm over tokens would mix them)."""
    z_pos, z_neg = features(4, (1, 5, 8))
    base = normalized_attention(z_pos, z_neg, 3.0, 1.2, 0.5)
    z_pos[0, 2] *= 100.0
    z_neg[0, 2] *= 100.0
    scaled = normalized_attention(z_pos, z_neg, 3.0, 1.2, 0.5)
    torch.testing.assert_close(scaled[0, 2], 100.0 * base[0, 2], **TOL)
    others = [0, 1, 3, 4]
    assert torch.equal(scaled[0, others], base[0, others])


@pytest.mark.parametrize("tau, alpha", [(1.0, 0.5), (2.5, 0.5), (2.5, 0.2), (7.0, 1.0)])
def test_scale_zero_is_the_positive_feature(tau, alpha):
    z_pos, z_neg = features(5)
    torch.testing.assert_close(normalized_attention(z_pos, z_neg, 0.0, tau, alpha), z_pos, **TOL)


@pytest.mark.parametrize("phi", [0.0, 2.0, 10.0])
def test_alpha_zero_is_the_positive_feature(phi):
    z_pos, z_neg = features(6)
    assert torch.equal(normalized_attention(z_pos, z_neg, phi, 2.5, 0.0), z_pos)


def test_alpha_one_is_the_normalized_feature_and_with_scale_zero_the_positive_one():
    z_pos, z_neg = features(7)
    torch.testing.assert_close(normalized_attention(z_pos, z_neg, 2.0, 2.5, 1.0), paper_nag(z_pos, z_neg, 2.0, 2.5, 1.0), **TOL)
    torch.testing.assert_close(normalized_attention(z_pos, z_neg, 0.0, 2.5, 1.0), z_pos, **TOL)


def test_zero_positive_token_stays_zero_and_nothing_is_nan():
    z_pos, z_neg = features(8, (1, 3, 8))
    z_pos[0, 1] = 0.0
    out = normalized_attention(z_pos, z_neg, 2.0, 2.5, 0.5)
    assert torch.isfinite(out).all() and torch.equal(out[0, 1], torch.zeros(8, dtype=out.dtype))
    torch.testing.assert_close(out[0, [0, 2]], paper_nag(z_pos[:, [0, 2]], z_neg[:, [0, 2]], 2.0, 2.5, 0.5)[0], **TOL)
    z_neg[0, 1] = 0.0  # Z+ = Z- = 0: Z~ = 0, nothing to scale
    assert torch.equal(normalized_attention(z_pos, z_neg, 2.0, 2.5, 0.5)[0, 1], torch.zeros(8, dtype=out.dtype))


# ---- the method ----------------------------------------------------------------------------------

def test_paper_defaults_declared_predictions_and_card():
    assert NAGParams() == NAGParams(scale=2.0, tau=2.5, alpha=0.5)
    assert NormalizedAttentionGuidance.needs == ("uncond", "nag")
    card = method_card("nag")
    assert {row["name"]: row["default"] for row in card["parameters"]} == {"scale": 2.0, "tau": 2.5, "alpha": 0.5, "t_low": 0, "t_high": 999}
    assert "2505.21179" in card["reference"] and "Z~ = Z+ + scale (Z+ - Z-)" in card["formula"]
    assert card["cost"].startswith("2 network predictions per step (uncond, nag)")
    assert load_method("nag").config() == {"method": "nag", "params": {"scale": 2.0, "tau": 2.5, "alpha": 0.5}}


def test_describe_shows_the_defaults(capsys):
    assert bench_main(["describe", "method", "nag"]) == 0
    out = capsys.readouterr().out
    assert "'name': 'tau', 'type': 'float', 'default': 2.5" in out and "'name': 'alpha', 'type': 'float', 'default': 0.5" in out


def test_guide_takes_the_nag_prediction_inside_the_window_and_the_positive_outside():
    gen = torch.Generator().manual_seed(9)
    method = load_method("nag", {"t_low": "300", "t_high": "700"})
    seen = set()
    for step in CHAIN:
        preds = {name: torch.randn((2, 4, 3, 3), generator=gen, dtype=torch.float64) for name in ("uncond", "nag")}
        eps, state = guide(method, step, preds, {})
        inside = 300 <= step.t <= 700
        seen.add(inside)
        assert torch.equal(eps, preds["nag"] if inside else preds["uncond"])
        assert torch.all(state["guidance_scale"] == (2.0 if inside else 0.0))
    assert seen == {True, False}


class _Recorder:
    """A denoiser that records the attention guidance it is told to use."""

    def __init__(self):
        self.seen = []

    def guide_attention(self, params):
        self.seen.append(params)

    def __call__(self, x, step, names):
        return {name: torch.zeros_like(x) for name in names}


def test_nag_prepares_the_denoiser_before_a_draw_and_cleans_up_after():
    method = load_method("nag", {"scale": "4", "tau": "1.5", "alpha": "0.25"})
    denoiser = _Recorder()
    assert isinstance(denoiser, AttentionGuided)
    method.prepare_models(denoiser)
    method.cleanup_models(denoiser)
    assert denoiser.seen == [NAGParams(scale=4.0, tau=1.5, alpha=0.25), None]
    load_method("np").prepare_models(denoiser)  # other methods leave the network alone
    assert len(denoiser.seen) == 2
    with pytest.raises(MethodError, match="no one to hook|has none to hook"):
        method.prepare_models(lambda x, step, names: {})


@pytest.mark.parametrize("bad, match", [({"tau": "0.5"}, "tau"), ({"tau": "nan"}, "tau"), ({"alpha": "1.5"}, "alpha"),
                                        ({"alpha": "-0.1"}, "alpha"), ({"scale": "inf"}, "scale")])
def test_parameter_validation(bad, match):
    with pytest.raises(BenchError, match=match):
        load_method("nag", bad)


# ---- refused where there are no cross-attention layers -------------------------------------------

@pytest.mark.parametrize("task", ["gmm1d-remove-1", "mnist-remove-0"])
def test_tasks_without_cross_attention_refuse_it_in_one_line(task, db, capsys):
    code = bench_main(["run", "--method", "nag", "--task", task, "--samples", "6", "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"method 'nag' needs predictions ['nag'] that task '{task}' does not provide" in err and "tasks that do: sd2-" in err
    assert not db.exists() or Store(db).runs().empty
