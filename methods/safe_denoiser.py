"""Safe Denoiser as its authors run it (Kim, Kim, Yusuf, Ermon & Park 2025, "Training-Free Safe Denoisers for Safe
Use of Diffusion Models", arXiv 2502.08011, NeurIPS 2025; code github.com/MingyuKim87/Safe_Denoiser, commit 223415b).

Read in their code (P = models/textuals_visual/modified_safree_diffusion_pipeline_threshold_time.py, `__call__`;
R = repellency/repellency_methods_threshold.py, class `RBFKernelRepellency` registered as `kernel_fast`;
C = configs/nudity/safe_denoiser.yaml; run_nudity.py builds the pipeline), per step with guided eps and latent x_t:

  1. window: only while 780 <= t <= 1000 (P: `negation_warmup_end` 780, `negation_warmup_start` 1000).
  2. x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar), the scheduler's `pred_original_sample` for the guided eps
     (P: `self.scheduler.step(noise_pred, t, latents).pred_original_sample`; run_nudity.py: `DDPMScheduler`).
  3. K_m = exp(-||x0_hat - x_m||_2 / (2 sigma^2)), an UNSQUARED distance, over the M negation examples
     (R `empirical_denoiser`: `torch.cdist(...) / (2. * sigma ** 2)`, then `.exp()`); sigma 3.15 (C).
  4. E_B = sum_m K_m x_m / (sum_m K_m + 1e-8): the kernel mean itself, not a displacement (R: `nominator /
     denominator`, denominator = `kernel[:, -1] + self.epsilon`, epsilon 1e-8 in `RepellencyMethod.__init__`).
  5. gate: on where sum_m K_m + 1e-8 > threshold - margin (R `conditioning_threshold`; margin 1.6 =
     `beta_threshold_margin`, C). threshold (R `RBFKernelRepellency.__init__` with `beta_threshold` unset, then
     `set_noisy_proj_ref` and `empirical_beta`): each x_m noised to the chain's last timestep with seed-42 noise,
     its kernel mass over the set (+1e-8), the `quantile` 0.0 (their default: the minimum) over m.
  6. x0_hat' = x0_hat - 0.33 E_B (R `conditioning_threshold`: `x_0_hat -= self.scale * negative_x_0_hat`; scale 0.33, C).
  7. x_t' = sqrt(abar) x0_hat' + sqrt(1 - abar) z with fresh noise z (P: `torch.randn(...)`, `scheduler.add_noise`).
  8. the scheduler steps from the REPLACED latent with the SAME eps, the UNet not re-run (P: `latents = add_noise(...)`,
     then `latents = self.scheduler.step(noise_pred, t, latents).prev_sample`).

Within our contract (a method returns an eps; the sampler steps from x_t): every first-order sampler here (DDPM
with either variance, their `DDPMScheduler`; DDIM; Euler ancestral; DPM-Solver++'s first step) moves x_prev by
sqrt(abar_prev / abar) (y - x_t) when its latent is y instead of x_t at a fixed eps, so step 8 is returned as

    eps' = eps + sqrt(abar_prev / abar) (x_t' - x_t) / (gain / divisor)       (the transition's slope in eps)

which makes the sampler's x_prev exactly theirs, its own noise included (tests/methods/test_method_safe_denoiser.py
checks it against stepping from x_t'). The unavoidable differences: a multistep DPM-Solver++ step weighs x_t
differently and keeps x0(x_t, eps') in its history, not x0(x_t', eps); z is our counter-based method noise
(`step.transition.noise()`), not their generator's stream; the threshold's noise is a CPU generator seeded 42 in
float64, not their CUDA stream. `guide` does not see x_t, so the method keeps it in its state (x_T from
`init_state`, then x_prev from `observe`). Their pipeline runs one image per call (`denominator.item()`); here the
gate is per sample. x0_hat is from the eps the method receives (`uncond`; theirs is after classifier-free guidance),
never clipped (SD v1.4's scheduler config, which their DDPMScheduler loads, sets clip_sample false, as we read it).

Transferred as is: the kernel, its unsquared distance, the 1e-8, the gate with margin 1.6 (a kernel mass, i.e.
a count of examples' weights in [0, 1], so it means the same with our sets of 400-515 examples as with their 515),
the quantile 0.0 and scale 0.33. Not transferred as is:
  - the window: t >= 780 on SD's scaled-linear schedule (betas 0.00085-0.012) is abar <= 0.0438; on the linear schedule
    of every task here (1e-4-0.02) t = 780 is abar 0.0021, a signal 4.6x weaker, and abar 0.0438 is t = 554. The window is
    a noise level, so t_low defaults to 554 (t_low=780 gives their timestep literally); t_high 999 is the last of T = 1000.
  - their `project` divides each negation latent by its norm along dim 1, i.e. per pixel over the 4 SD latent channels;
    on our data that would make every MNIST pixel +-1 and put 2-D points on a circle, so the examples are used as given.
  - sigma: 3.15 is for their normalised latents, every one of norm sqrt(64 * 64) = 64. The kernel weight of a distance
    is scale-free if 2 sigma^2 scales like distances, so `sigma` 0 (default) means sigma = 3.15 sqrt(r / 64) with r the
    negation set's RMS norm: their value on their data; 0.27 on gmm1d-remove-1, 0.82 on gmm2d-remove-3, 2.03 on MNIST.
    The update x0_hat - 0.33 E_B is, as theirs, not translation-equivariant: on gmm1d-remove-1 the forbidden mode sits at
    the origin, E_B is near 0, and what acts is the re-noising. Measured with these defaults (50 steps): on MNIST the
    gate fires on some samples at some steps of the window; on gmm2d-remove-3 (threshold 149) almost never, since a
    high-noise x0_hat is a blend of modes, never as deep in the set as its least typical member.
  - the threshold's timestep: theirs is the last of their 50 DDPM steps (t = 1); ours t = 0, the last of every chain here.
The gmm tasks draw their negation set (515 points, their set's size) from the forbidden mode with a fixed seed; MNIST's
is the removed class's 400 training digits (the task's NegationKernel). Both come as `negation_set`: [B, M, *shape],
the same M examples on every row (an expanded view, no copy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from negguide.methods.base import GuidanceMethod, Params, Predictions, State
from negguide.methods.schedule import Schedule, Step

THEIR_SIGMA, THEIR_NORM = 3.15, 64.0  # C `sigma`; the norm of each of their per-pixel-normalised 4x64x64 latents
EPSILON = 1e-8  # R RepellencyMethod.__init__ `epsilon`
THRESHOLD_SEED = 42  # R set_noisy_proj_ref: torch.Generator().manual_seed(42)


@dataclass(frozen=True)
class SafeDenoiserParams(Params):
    scale: float = 0.33  # C `scale`: x0_hat' = x0_hat - scale * E_B
    t_low: int = 554  # P `negation_warmup_end` 780 on SD's schedule: the same abar (0.0438) on the linear one
    t_high: int = 999  # P `negation_warmup_start` 1000: every timestep of T = 1000 from t_low on
    sigma: float = 0.0  # kernel bandwidth; 0: their 3.15 rescaled to the negation set's norm (see the docstring)
    margin: float = 1.6  # C `beta_threshold_margin`: the gate is on where kernel mass > threshold - margin
    quantile: float = 0.0  # R `quantile` default: the threshold is this quantile of the set's own masses
    threshold: float = 0.0  # the gate's kernel mass before the margin; <= 0: computed from the set (R `beta_threshold` -1)

    def validate(self) -> None:
        super().validate()
        if not self.sigma >= 0.0 or self.sigma == float("inf"):
            raise ValueError(f"sigma must be a finite number >= 0 (0: derived from the negation set), got {self.sigma}")
        if not 0.0 <= self.quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {self.quantile}")
        if not (abs(self.margin) < float("inf") and abs(self.threshold) < float("inf")):
            raise ValueError(f"margin and threshold must be finite, got {self.margin} and {self.threshold}")


def bandwidth(examples: torch.Tensor, sigma: float) -> float:
    """sigma, or 0 -> their 3.15 times sqrt(RMS norm of the set / 64)."""
    if sigma > 0.0:
        return sigma
    rms = examples.pow(2).sum(1).mean().sqrt().item()
    return THEIR_SIGMA * math.sqrt(rms / THEIR_NORM)


def kernel_fast(x0: torch.Tensor, examples: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """R `empirical_denoiser`: kernel mass sum_m K_m + 1e-8 [B] and kernel mean E_B [B, D], K_m = exp(-|x0 - x_m| / (2 sigma^2))."""
    distance = (x0.pow(2).sum(1, keepdim=True) - 2.0 * x0 @ examples.T + examples.pow(2).sum(1)[None]).clamp(min=0.0).sqrt()
    kernel = torch.exp(-distance / (2.0 * sigma**2))
    mass = kernel.sum(1) + EPSILON
    return mass, (kernel @ examples) / mass[:, None]


def gate_threshold(examples: torch.Tensor, sigma: float, quantile: float) -> float:
    """R `set_noisy_proj_ref` + `empirical_beta` at the chain's last timestep (t = 0 here): the `quantile` of the set's
    own kernel masses, each example noised with seed-42 noise."""
    alpha_bar = float(Schedule().alpha_bars()[0])
    noise = torch.randn(examples.shape, generator=torch.Generator().manual_seed(THRESHOLD_SEED), dtype=torch.float64)
    noisy = alpha_bar**0.5 * examples + (1.0 - alpha_bar) ** 0.5 * noise.to(examples.device)
    mass, _ = kernel_fast(noisy, examples, sigma)
    return torch.quantile(mass, quantile).item()


class SafeDenoiser(GuidanceMethod):
    name = "safe-denoiser"
    reference = ("Kim, Kim, Yusuf, Ermon & Park 2025 (NeurIPS), arXiv 2502.08011; as their code runs it: "
                 "github.com/MingyuKim87/Safe_Denoiser kernel_fast, modified_safree_diffusion_pipeline_threshold_time.py")
    summary = ("Safe Denoiser (authors' algorithm): x0-prediction minus 0.33 x the kernel mean of nearby negation examples, "
               "gated by kernel mass, re-noised, for t >= 780")
    needs = ("uncond", "negation_set")
    Params = SafeDenoiserParams

    def init_state(self, batch: int, like: torch.Tensor) -> State:
        return {"x": like, "guidance_scale": torch.zeros(batch, dtype=like.dtype, device=like.device)}

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        p, eps = self.params, preds["uncond"]
        off = torch.zeros(len(eps), dtype=eps.dtype, device=eps.device)
        if not self.active(step):
            return eps, {**state, "guidance_scale": off}
        if step.transition is None:
            raise RuntimeError("safe-denoiser re-noises with the sampler's transition (its noise and slope): run it in the sampling loop")
        x = state["x"].reshape(len(eps), -1).double()
        examples = preds["negation_set"][0].reshape(preds["negation_set"].shape[1], -1).double()  # every row holds the same set
        sigma = bandwidth(examples, p.sigma)
        if "threshold" not in state:  # computed once per chain, from the set alone
            value = p.threshold if p.threshold > 0.0 else gate_threshold(examples, sigma, p.quantile)
            state = {**state, "threshold": torch.full((len(eps),), value, dtype=torch.float64, device=eps.device)}
        a, s = step.alpha_bar**0.5, (1.0 - step.alpha_bar) ** 0.5
        x0 = (x - s * eps.reshape(len(eps), -1).double()) / a  # step 2
        mass, kernel_mean = kernel_fast(x0, examples, sigma)  # steps 3-4
        gate = mass > state["threshold"] - p.margin  # step 5
        x0_repelled = x0 - p.scale * kernel_mean  # step 6
        x_renoised = a * x0_repelled + s * step.transition.noise().reshape(len(eps), -1).double()  # step 7
        slope = step.transition.gain / step.transition.divisor
        moved = eps.reshape(len(eps), -1).double() + (step.alpha_bar_prev / step.alpha_bar) ** 0.5 * (x_renoised - x) / slope  # step 8
        guided = torch.where(gate[:, None], moved, eps.reshape(len(eps), -1).double()).reshape(eps.shape).to(eps.dtype)
        return guided, {**state, "guidance_scale": p.scale * gate.to(eps.dtype), "kernel_mass": mass.to(eps.dtype)}

    def observe(self, step: Step, x: torch.Tensor, x_prev: torch.Tensor, preds: Predictions, state: State) -> State:
        return {**state, "x": x_prev}
