"""Each sampler pinned to diffusers' scheduler on the same timesteps and noise (float64), and to closed forms.

diffusers keeps its schedules in float32 and casts samples to float32 inside some steps; for a float64
comparison each scheduler module sees a `torch` whose float32 is float64, and the schedule arrays are
replaced by the float64 ones the harness uses. The chain is the whole 50-step respaced chain, with a
smooth nonlinear eps so that every transition and the multistep history matter.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from diffusers.schedulers import scheduling_ddim, scheduling_ddpm, scheduling_dpmsolver_multistep, scheduling_euler_ancestral_discrete

from negguide.bench import noise
from negguide.bench.sampler import sample
from negguide.bench.samplers import SamplerSpec
from negguide.bench.tasks.spec import Conditioning
from negguide.methods.registry import load_method
from negguide.methods.schedule import Schedule

SEED, SHAPE, ROWS, STEPS = 7, (3, 4), np.arange(5), 50
SCHEDULE = Schedule()
ABAR = torch.from_numpy(SCHEDULE.alpha_bars())


def fake_eps(x: torch.Tensor, t: int) -> torch.Tensor:
    """A smooth, nonlinear stand-in for a network's noise prediction."""
    return torch.tanh(x) * (0.5 + t / 2000.0) + 0.1 * torch.sin(3.0 * x)


class FakeDenoiser:
    def __call__(self, x, step, names):
        return {name: fake_eps(x, step.t) for name in names}


def harness_chain(spec: SamplerSpec) -> torch.Tensor:
    x, _ = sample(load_method("none"), Conditioning(FakeDenoiser(), ROWS), SCHEDULE.steps(STEPS), SEED, SHAPE,
                  dtype=torch.float64, sampler=spec.build())
    return x


def step_noise(index: int) -> torch.Tensor:
    return noise.gaussian(SEED, ROWS, index, SHAPE)


@pytest.fixture
def float64_diffusers(monkeypatch):
    proxy = types.SimpleNamespace(**{name: getattr(torch, name) for name in dir(torch) if not name.startswith("__")})
    proxy.float32 = torch.float64
    for module in (scheduling_ddim, scheduling_ddpm, scheduling_dpmsolver_multistep, scheduling_euler_ancestral_discrete):
        monkeypatch.setattr(module, "torch", proxy)
    return monkeypatch


def inject_noise(monkeypatch, module) -> list[int]:
    """diffusers draws its step noise with randn_tensor: hand it the harness's noise of each step in turn."""
    calls: list[int] = []

    def fake_randn(shape, **kwargs):
        calls.append(len(calls))
        return step_noise(len(calls) - 1)
    monkeypatch.setattr(module, "randn_tensor", fake_randn)
    return calls


def timesteps() -> list[int]:
    return SCHEDULE.timesteps(STEPS)


@pytest.mark.parametrize("variance, variance_type", [("beta_tilde", "fixed_small"), ("beta", "fixed_large")])
def test_ddpm_matches_diffusers(float64_diffusers, variance, variance_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type=variance_type, clip_sample=False)
    scheduler.set_timesteps(timesteps=timesteps())
    scheduler.alphas_cumprod, scheduler.one = ABAR, torch.tensor(1.0, dtype=torch.float64)
    x = noise.gaussian(SEED, ROWS, noise.INITIAL, SHAPE)
    # diffusers skips the draw on t = 0; our step k draws noise k, so feed noise by step index
    for index, t in enumerate(timesteps()):
        float64_diffusers.setattr(scheduling_ddpm, "randn_tensor", lambda shape, index=index, **kw: step_noise(index))
        x = scheduler.step(fake_eps(x, t), t, x).prev_sample
    torch.testing.assert_close(harness_chain(SamplerSpec.of("ddpm", {"variance": variance})), x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_diffusers(float64_diffusers, eta):
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)
    scheduler.alphas_cumprod, scheduler.final_alpha_cumprod = ABAR, torch.tensor(1.0, dtype=torch.float64)
    kept = timesteps()
    x = noise.gaussian(SEED, ROWS, noise.INITIAL, SHAPE)
    for index, t in enumerate(kept):
        gap = t - kept[index + 1] if index + 1 < len(kept) else kept[-2] - kept[-1]
        # diffusers steps to t - T // num_inference_steps: choose the count whose ratio is this step's gap (20 or 21)
        scheduler.num_inference_steps = 1000 // gap
        assert 1000 // scheduler.num_inference_steps == gap
        x = scheduler.step(fake_eps(x, t), t, x, eta=eta, variance_noise=step_noise(index)).prev_sample
    torch.testing.assert_close(harness_chain(SamplerSpec.of("ddim", {"eta": eta})), x, rtol=1e-9, atol=1e-9)


def test_dpm_solver_matches_diffusers(float64_diffusers):
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", algorithm_type="dpmsolver++",
                                            solver_order=2, solver_type="midpoint", final_sigmas_type="zero", lower_order_final=True)
    scheduler.set_timesteps(timesteps=timesteps())
    sigmas = ((1.0 - ABAR) / ABAR) ** 0.5
    scheduler.sigmas = torch.cat([sigmas[torch.tensor(timesteps())], torch.zeros(1, dtype=torch.float64)])
    x = noise.gaussian(SEED, ROWS, noise.INITIAL, SHAPE)
    for t in timesteps():
        x = scheduler.step(fake_eps(x, t), t, x).prev_sample
    torch.testing.assert_close(harness_chain(SamplerSpec.of("dpm-solver++")), x, rtol=1e-9, atol=1e-9)


def test_euler_ancestral_matches_diffusers(float64_diffusers):
    scheduler = EulerAncestralDiscreteScheduler(num_train_timesteps=1000, beta_schedule="linear")
    scheduler.set_timesteps(STEPS)
    kept = torch.tensor(timesteps(), dtype=torch.float64)
    sigmas = ((1.0 - ABAR) / ABAR) ** 0.5
    scheduler.timesteps = kept  # diffusers' own Euler timesteps are fractional: pin on the harness's
    scheduler.sigmas = torch.cat([sigmas[kept.long()], torch.zeros(1, dtype=torch.float64)])
    calls = inject_noise(float64_diffusers, scheduling_euler_ancestral_discrete)
    x_vp = noise.gaussian(SEED, ROWS, noise.INITIAL, SHAPE)
    x = x_vp / ABAR[int(kept[0])] ** 0.5  # diffusers' Euler state is x / sqrt(abar) (VE coordinates)
    for t in timesteps():
        x = scheduler.step(fake_eps(x * ABAR[t] ** 0.5, t), float(t), x).prev_sample
    assert len(calls) == STEPS
    torch.testing.assert_close(harness_chain(SamplerSpec.of("euler-ancestral")), x, rtol=1e-9, atol=1e-9)


# ---- closed forms: Gaussian data N(0, S^2), whose exact eps and probability-flow map are known ---------------

S = 0.5


class GaussianEps:
    """The exact eps of N(0, S^2) data under the VP process: sqrt(1 - abar) x / (abar S^2 + 1 - abar)."""

    def __call__(self, x, step, names):
        abar = step.alpha_bar
        return {name: (1.0 - abar) ** 0.5 * x / (abar * S**2 + 1.0 - abar) for name in names}


def gaussian_chain(spec: SamplerSpec, steps: int, rows: int = 2000) -> torch.Tensor:
    x, _ = sample(load_method("none"), Conditioning(GaussianEps(), np.arange(rows)), SCHEDULE.steps(steps), 0, (1,),
                  dtype=torch.float64, sampler=spec.build())
    return x


def flow_error(spec: SamplerSpec, steps: int) -> float:
    """Largest error against the exact probability-flow map, x_T -> x_T S / sqrt(abar_T S^2 + 1 - abar_T)."""
    x_T = noise.gaussian(0, np.arange(2000), noise.INITIAL, (1,))
    abar = float(ABAR[999])
    return float((gaussian_chain(spec, steps) - x_T * S / (abar * S**2 + 1.0 - abar) ** 0.5).abs().max())


@pytest.mark.parametrize("spec, order", [(("ddim", {"eta": 0}), 1), (("dpm-solver++", {"order": 1}), 1), (("dpm-solver++", {}), 2)])
def test_deterministic_samplers_converge_to_the_probability_flow_at_their_order(spec, order):
    coarse, fine = flow_error(SamplerSpec.of(*spec), 100), flow_error(SamplerSpec.of(*spec), 500)
    # 5x the steps divides the error by about 5 (first order; measured 4.85) or 25 (second order; measured 44)
    assert fine < 0.02 and (3.5 < coarse / fine < 7 if order == 1 else coarse / fine > 15)


@pytest.mark.parametrize("spec", [("ddpm", {}), ("ddpm", {"variance": "beta"}), ("ddim", {"eta": 0.5}), ("euler-ancestral", {})])
def test_stochastic_samplers_reach_the_data_distribution(spec):
    x = gaussian_chain(SamplerSpec.of(*spec), 1000, rows=20_000)
    # standard error of the std of 20,000 normal draws: 0.5 / sqrt(40,000) = 0.0025; allow 4 of them
    assert abs(float(x.std()) - S) < 0.01 and abs(float(x.mean())) < 4 * S / 20_000**0.5


def test_identities_between_samplers():
    """DDIM eta 1 = Euler ancestral = DDPM with beta_tilde; DDIM eta 0 = Euler (eta 0) = DPM-Solver++ first order."""
    ancestral = [gaussian_chain(SamplerSpec.of(*spec), 20) for spec in (("ddpm", {}), ("ddim", {"eta": 1}), ("euler-ancestral", {}))]
    flows = [gaussian_chain(SamplerSpec.of(*spec), 20) for spec in (("ddim", {}), ("euler-ancestral", {"eta": 0}), ("dpm-solver++", {"order": 1}))]
    for group in (ancestral, flows):
        for other in group[1:]:
            torch.testing.assert_close(other, group[0], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ancestral[0], flows[0])


@pytest.mark.parametrize("spec", [("ddpm", {}), ("ddim", {"eta": 0}), ("ddim", {"eta": 1}), ("dpm-solver++", {}), ("euler-ancestral", {})])
def test_every_sampler_draws_the_exact_mixture(spec):
    """Unguided on gmm1d-remove-1 (100 steps, 3,000 samples): each mode's share within 4 standard errors of its weight."""
    from negguide.bench.run.shards import pick_device, runtime_for
    from negguide.bench.tasks import get_task

    task = get_task("gmm1d-remove-1")
    runtime = runtime_for(task, pick_device(task))
    x, _ = sample(load_method("none"), runtime.condition(np.arange(3000)), task.schedule.steps(100), 0, task.shape,
                  dtype=runtime.dtype, sampler=SamplerSpec.of(*spec).build())
    labels = runtime.records(x, ())["label"]
    weights = np.asarray(runtime.problem.mixture.weights)
    shares = np.bincount(labels, minlength=len(weights)) / len(labels)
    assert np.all(np.abs(shares - weights) < 4 * np.sqrt(weights * (1 - weights) / len(labels)))
