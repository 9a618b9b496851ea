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
