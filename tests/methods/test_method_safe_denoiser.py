"""`safe-denoiser` against the authors' loop (github.com/MingyuKim87/Safe_Denoiser), transcribed here.

Their pipeline (models/textuals_visual/modified_safree_diffusion_pipeline_threshold_time.py) with `kernel_fast`
(repellency/repellency_methods_threshold.py) and a DDPMScheduler (run_nudity.py), one image per call, per step t:

    eps = model(x_t)
    if t_low <= t <= t_high:
        x0 = pred_original_sample(eps, t, x_t)
        K_m = exp(-cdist(x0, x_m) / (2 sigma^2));  mass = sum_m K_m + 1e-8;  E_B = sum_m K_m x_m / mass
        x0' = x0 - scale * E_B
        if mass > threshold - margin:  x_t = add_noise(x0', z, t)          (z fresh)
    x_{t-1} = DDPMScheduler.step(eps, t, x_t)                                  (the same eps: no second model call)

threshold = the `quantile` over m of sum_m' exp(-cdist(add_noise(x_m, n_m, t_last), x_m') / (2 sigma^2)) + 1e-8, n from
a generator seeded 42. The scheduler step is written as diffusers writes it (pred_original_sample coefficient and
current sample coefficient, variance beta_tilde, none on the last step), distances as explicit differences.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from negguide.bench import noise
from negguide.bench.sampler import sample
from negguide.bench.samplers.registry import SamplerSpec
from negguide.bench.tasks import get_task
from negguide.bench.tasks.spec import Conditioning
from negguide.datasets.gmm import GMM1D, GMM2D, ExactDenoiser, RemovalProblem
from negguide.methods import BenchError, Schedule
from negguide.methods.base import guide, init_state
from negguide.methods.registry import build_params, method_class
from negguide.methods.safe_denoiser import SafeDenoiser, SafeDenoiserParams, bandwidth

CHAIN = Schedule().steps(50)


def _norms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j| for every pair, by explicit differences (torch.cdist's direct mode)."""
    return torch.linalg.vector_norm(a[:, None, :] - b[None, :, :], dim=2)


def their_threshold(examples: torch.Tensor, sigma: float, quantile: float) -> float:
    """R set_noisy_proj_ref (add_noise at the chain's last timestep, generator seeded 42) and empirical_beta."""
    abar = float(Schedule().alpha_bars()[0])
    n = torch.randn(examples.shape, generator=torch.Generator().manual_seed(42), dtype=torch.float64)
    noisy = math.sqrt(abar) * examples + math.sqrt(1.0 - abar) * n
    beta = torch.exp(-_norms(noisy, examples) / (2.0 * sigma**2)).sum(1) + 1e-8
    return torch.quantile(beta, quantile).item()


def their_loop(model, examples, seed, keys, dim, scale, sigma, margin, t_low, t_high, quantile=0.0, threshold=None):
    """The pipeline's loop, image by image (their `denominator.item()` allows one), with our counter-based noises."""
    threshold = their_threshold(examples, sigma, quantile) if threshold is None else threshold
    images, gates = [], []
    for key in keys:
        x = noise.gaussian(seed, np.array([key]), noise.INITIAL, (dim,))
        fired = 0
        for step in CHAIN:
            a, s = math.sqrt(step.alpha_bar), math.sqrt(1.0 - step.alpha_bar)
            eps = model(x, step)
            if t_low <= step.t <= t_high:
                x0 = (x - s * eps) / a
                kernel = torch.exp(-_norms(x0, examples) / (2.0 * sigma**2))
                denominator = kernel.sum(1) + 1e-8
                negative_x0 = (kernel[:, :, None] * examples[None]).sum(1) / denominator[:, None]
                x0 = x0 - scale * negative_x0
                if denominator.item() > threshold - margin:
                    z = noise.gaussian(seed, np.array([key]), noise.METHOD + step.index, (dim,))
                    x = a * x0 + s * z  # scheduler.add_noise
                    fired += 1
            # DDPMScheduler.step, variance_type fixed_small, no clipping
            abar_prev = step.alpha_bar_prev
            beta_t = 1.0 - step.alpha_bar / abar_prev
            x0_pred = (x - s * eps) / a
            mean = (abar_prev**0.5 * beta_t / (1.0 - step.alpha_bar)) * x0_pred + ((1.0 - beta_t) ** 0.5 * (1.0 - abar_prev) / (1.0 - step.alpha_bar)) * x
            if step.t_prev >= 0:
                variance = (1.0 - abar_prev) / (1.0 - step.alpha_bar) * beta_t
                mean = mean + variance**0.5 * noise.gaussian(seed, np.array([key]), step.index, (dim,))
            x = mean
        images.append(x)
        gates.append(fired)
    return torch.cat(images), gates


CASES = [  # (mixture, removed, params): the default, and settings where the gate fires on some images only
    (GMM1D, 1, {}),
    (GMM2D, 3, {"sigma": 2.0, "margin": 100.0, "scale": 1.5}),
    (GMM2D, 0, {"sigma": 0.6, "quantile": 0.25, "t_low": 400, "t_high": 900}),
    (GMM2D, 0, {"threshold": 60.0, "sigma": 0.6, "t_low": 200, "t_high": 900, "scale": 2.0}),
]


@pytest.mark.parametrize("mixture,removed,overrides", CASES)
def test_whole_chains_match_their_loop(mixture, removed, overrides):
    """50 DDPM steps, 12 samples: the sampler with the method gives their loop's images to 1e-9, state included
    (x_t, the threshold), and the gate fires on some steps of some images."""
    denoiser = ExactDenoiser(RemovalProblem(mixture, removed))
    method = SafeDenoiser(SafeDenoiserParams(**overrides))
    p, keys = method.params, np.arange(12)
    ours, traces = sample(method, Conditioning(denoiser, keys), CHAIN, 3, (mixture.dim,), torch.float64)
    examples = denoiser.negation_set.double()
    sigma = bandwidth(examples, p.sigma)
    uncond = lambda x, step: denoiser(x, step, ("uncond",))["uncond"]  # noqa: E731
    theirs, gates = their_loop(uncond, examples, 3, keys, mixture.dim, p.scale, sigma, p.margin, p.t_low, p.t_high,
                               p.quantile, p.threshold if p.threshold > 0 else None)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    assert sum(gates) > 0 and min(gates) < max(gates)
    fired = (traces.arrays()["guidance_scale"] > 0).sum(0)
    assert fired.tolist() == gates


@pytest.mark.parametrize("sampler", ["ddpm", "ddpm:variance=beta", "ddim", "ddim:eta=1", "euler-ancestral"])
def test_the_returned_eps_steps_from_the_renoised_latent(sampler):
    """Their step 8 (the scheduler continues from x_t' with the same eps) for every first-order sampler here."""
    name, _, setting = sampler.partition(":")
    built = SamplerSpec.of(name, dict([setting.split("=")]) if setting else {}).build()
    gen = torch.Generator().manual_seed(5)
    examples = 0.3 * torch.randn((40, 3), generator=gen, dtype=torch.float64)
    method = SafeDenoiser(SafeDenoiserParams(threshold=1e-12, margin=0.0, sigma=1.0))  # the gate always on
    for step in [CHAIN[i] for i in (0, 5, 14)]:
        x, eps = torch.randn((6, 3), generator=gen, dtype=torch.float64), torch.randn((6, 3), generator=gen, dtype=torch.float64)
        z = torch.randn((6, 3), generator=gen, dtype=torch.float64)
        memory = built.start(6, x)
        taken = step.__class__(**{**step.__dict__, "transition": _with_noise(built.transition(step, x, memory), z)})
        guided, state = guide(method, taken, {"uncond": eps, "negation_set": examples.expand(6, 40, 3)}, init_state(method, 6, x))
        x0 = (x - math.sqrt(1 - step.alpha_bar) * eps) / math.sqrt(step.alpha_bar)
        kernel = torch.exp(-_norms(x0, examples) / 2.0)
        x0 = x0 - 0.33 * (kernel @ examples) / (kernel.sum(1, keepdim=True) + 1e-8)
        renoised = math.sqrt(step.alpha_bar) * x0 + math.sqrt(1 - step.alpha_bar) * z
        want = built.transition(step, renoised, built.start(6, renoised)).mean(eps)
        torch.testing.assert_close(taken.transition.mean(guided), want, rtol=1e-10, atol=1e-10)
        assert torch.equal(state["guidance_scale"], torch.full((6,), 0.33, dtype=torch.float64))


def _with_noise(transition, z):
    import dataclasses

    return dataclasses.replace(transition, fresh_noise=lambda: z)


def test_defaults_sources_and_window():
    assert SafeDenoiserParams() == SafeDenoiserParams(scale=0.33, t_low=554, t_high=999, sigma=0.0, margin=1.6, quantile=0.0, threshold=0.0)
    assert SafeDenoiser.needs == ("uncond", "negation_set")
    # t_low 554 on the linear schedule is their t = 780 on SD's scaled-linear one (the same abar)
    sd = np.cumprod(1.0 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
    linear = Schedule().alpha_bars()
    assert int(np.argmin(abs(linear - sd[780]))) == 554
    # sigma 0: their 3.15 on a set of norm 64 (their per-pixel-normalised 4x64x64 latents), scale-equivariant elsewhere
    latents = torch.randn((7, 4, 64, 64), dtype=torch.float64)
    latents = (latents / latents.norm(dim=1, keepdim=True)).reshape(7, -1)
    assert bandwidth(latents, 0.0) == pytest.approx(3.15, rel=1e-12)
    assert bandwidth(4.0 * latents, 0.0) ** 2 == pytest.approx(4.0 * 3.15**2, rel=1e-12) and bandwidth(latents, 0.7) == 0.7
    # outside the window: the prediction unchanged, no noise drawn
    method = SafeDenoiser()
    x = torch.randn((3, 2), dtype=torch.float64)
    preds = {"uncond": torch.randn((3, 2), dtype=torch.float64), "negation_set": torch.zeros((3, 5, 2), dtype=torch.float64)}
    late = next(step for step in CHAIN if step.t < 554)
    out, state = guide(method, late, preds, init_state(method, 3, x))
    assert torch.equal(out, preds["uncond"]) and torch.equal(state["guidance_scale"], torch.zeros(3, dtype=torch.float64))
    params = build_params(SafeDenoiser, {"sigma": "0.5", "margin": "2", "t_low": "780"})
    assert (params.sigma, params.margin, params.t_low) == (0.5, 2.0, 780)
    for bad in ({"sigma": "-1"}, {"quantile": "2"}, {"margin": "inf"}):
        with pytest.raises(BenchError):
            build_params(SafeDenoiser, bad)


def test_registry_and_tasks():
    assert method_class("safe-denoiser") is SafeDenoiser
    assert method_class("safe-denoiser-theorem").needs == ("uncond", "negation", "negation_logit")
    for name in ("gmm1d-remove-1", "gmm2d-remove-3", "mnist-remove-0"):
        assert "negation_set" in get_task(name).predictions
    denoiser = ExactDenoiser(RemovalProblem(GMM2D, 3))
    got = denoiser(torch.zeros((4, 2), dtype=torch.float64), CHAIN[0], ("negation_set",))["negation_set"]
    assert got.shape == (4, 515, 2) and got.stride(0) == 0  # a view: one set for every row
    assert torch.allclose(got[0].mean(0), torch.tensor([-3.0, -3.0], dtype=torch.float64), atol=0.06)
