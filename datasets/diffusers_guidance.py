"""A harness guidance method inside a diffusers Stable Diffusion pipeline's own denoising loop (docs/python-api.md).

diffusers' `callback_on_step_end` sees the latents after the scheduler's step but cannot change the noise
prediction, so `guide_pipeline` hooks the UNet for the length of a `with` block:

- a forward pre-hook adds the negative prompt's rows to the pipeline's batch, so one UNet forward gives
  null (the pipeline's unconditional rows), positive and negative predictions;
- a forward hook gives the method `uncond` := eps(positive prompt), `neg` := eps(negative prompt) and, with
  CFG, `null`, and hands the pipeline [null, guided] in place of [null, positive]: the pipeline's own CFG then
  makes eps = eps_null + w (eps_guided - eps_null), the harness's text-to-image convention (bench/tasks/t2i.py);
- `guidance.callback`, passed as the pipeline's `callback_on_step_end`, gives the method the realised x_prev
  of the step (`observe`), where DNG updates its posterior.

The method's state is explicit: a fresh `init_state` at the first step of every pipeline call, then `guide` and
`observe` once per step, each step's constants (`Step`) read from the pipeline's scheduler.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from negguide.methods.base import GuidanceMethod, Predictions, State, guide, init_state, observe
from negguide.methods.schedule import Step

__all__ = ["guide_pipeline"]

PROVIDED = ("uncond", "neg", "null")  # null only when the pipeline runs CFG (guidance_scale > 1)


@contextlib.contextmanager
def guide_pipeline(pipe: Any, method: GuidanceMethod, negative_prompt: str | list[str]) -> Iterator["PipelineGuidance"]:
    """Guide every `pipe(...)` call inside the block away from `negative_prompt` with a harness `method`.

    `pipe` is a diffusers `StableDiffusionPipeline` (or one with the same denoising loop) whose scheduler works
    on the variance-preserving latents (DDPM, DDIM, DPM-Solver: `init_noise_sigma == 1`, one UNet call per step).
    Pass `callback_on_step_end=guidance.callback` to each call; leave the pipeline's own `negative_prompt` empty
    (it would replace the null prompt of CFG). `negative_prompt` is one text for the whole batch or one per image.
    After a call, `guidance.state` is the method's final per-sample state and `guidance.traces()` its traces.
    """
    _check_supported(pipe, method)
    guidance = PipelineGuidance(pipe, method, _encode(pipe, negative_prompt))
    handles = [pipe.unet.register_forward_pre_hook(guidance._before_unet, with_kwargs=True),
               pipe.unet.register_forward_hook(guidance._after_unet, with_kwargs=True)]
    try:
        yield guidance
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class _StepInFlight:
    """What `observe` needs of the step between the UNet's forward and the scheduler's result."""

    step: Step
    x: torch.Tensor  # x_t, [B, C, H, W]
    cfg: bool
    preds: Predictions | None = None


class PipelineGuidance:
    """The method's per-sample state and traces over one pipeline call, and the hooks that feed it."""

    def __init__(self, pipe: Any, method: GuidanceMethod, negative_embeds: torch.Tensor):
        self.pipe, self.method, self.negative_embeds = pipe, method, negative_embeds
        self.state: State | None = None
        self._rows: list[dict[str, torch.Tensor]] = []
        self._timesteps: list[int] = []
        self._in_flight: _StepInFlight | None = None
        self._observed = -1  # index of the last step whose x_prev the method has seen

    def traces(self) -> dict[str, torch.Tensor]:
        """Per-sample values of each step of the last call (the state after `guide`, as the harness records them):
        name -> [steps, B], plus `t` -> [steps], the training timestep of each row."""
        names = self._rows[0].keys() if self._rows else ()
        stacked = {name: torch.stack([row[name] for row in self._rows]).cpu() for name in names}
        return {**stacked, "t": torch.tensor(self._timesteps)}

    def callback(self, pipe: Any, index: int, t: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`callback_on_step_end`: hand the method the realised x_prev of step `index` (DNG's posterior update)."""
        flight = self._in_flight
        if flight is None or flight.preds is None or flight.step.index != index:
            raise RuntimeError(f"guidance.callback at step {index} without that step's UNet forward inside guide_pipeline")
        if "latents" not in tensors:
            raise RuntimeError("guidance.callback needs the latents: keep 'latents' in callback_on_step_end_tensor_inputs")
        self.state = observe(self.method, flight.step, flight.x, tensors["latents"], flight.preds, self.state)
        self._in_flight, self._observed = None, index
        return {}

    # ---- the UNet hooks --------------------------------------------------------------------

    def _before_unet(self, unet: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Start (or continue) the chain at this timestep, and add the negative prompt's rows to the batch."""
        latents, t = _unet_inputs(args, kwargs)
        if kwargs.get("added_cond_kwargs") is not None or kwargs.get("timestep_cond") is not None:
            raise ValueError("guide_pipeline supports text conditioning only (no IP-Adapter image embeddings, no timestep_cond)")
        cfg = bool(self.pipe.do_classifier_free_guidance)
        if "null" in self.method.needs and not cfg:
            raise ValueError(f"method {self.method.name!r} needs the null prompt's prediction: call the pipeline with guidance_scale > 1")
        batch = len(latents) // (2 if cfg else 1)
        x = latents[:batch]  # with CFG the pipeline feeds [latents, latents]
        index = self._index_of(t)
        if index == 0:
            self.state, self._rows, self._timesteps = init_state(self.method, batch, x), [], []
        elif self._observed != index - 1:
            raise RuntimeError(f"step {index - 1}'s x_prev never reached the method: pass callback_on_step_end=guidance.callback "
                               "to the pipeline call")
        self._in_flight = _StepInFlight(self._step(index, x), x, cfg)
        context = kwargs["encoder_hidden_states"]
        negative = self._negative_rows(batch).to(context.device, context.dtype)
        return (torch.cat([latents, x]), *args[1:]), {**kwargs, "encoder_hidden_states": torch.cat([context, negative])}

    def _after_unet(self, unet: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Split the predictions, let the method guide, and give the pipeline [null, guided] (or [guided])."""
        flight = self._in_flight
        eps = output[0] if isinstance(output, tuple) else output.sample
        parts = eps.chunk(3 if flight.cfg else 2)
        preds = dict(zip(("null", "uncond", "neg") if flight.cfg else ("uncond", "neg"), parts))
        guided, self.state = guide(self.method, flight.step, preds, self.state)
        self._in_flight = _StepInFlight(flight.step, flight.x, flight.cfg, preds)
        self._rows.append({name: value.detach().float() for name, value in self.method.trace(self.state).items()})
        self._timesteps.append(flight.step.t)
        returned = torch.cat([preds["null"], guided]) if flight.cfg else guided
        return (returned, *output[1:]) if isinstance(output, tuple) else type(output)(sample=returned)

    # ---- schedule constants and conditioning ------------------------------------------------

    def _index_of(self, t: Any) -> int:
        timesteps = self.pipe.scheduler.timesteps.cpu()
        found = (timesteps == torch.as_tensor(t).cpu()).nonzero()
        if len(found) != 1:
            raise ValueError(f"timestep {t} appears {len(found)} times in the scheduler's timesteps; guide_pipeline needs one UNet call per step")
        return int(found[0, 0])

    def _step(self, index: int, x: torch.Tensor) -> Step:
        """The step's constants from the scheduler's own alphas_cumprod; the next timestep in its list, -1 after the last.
        Under DDPMScheduler the step also carries the transition it takes (its variance type)."""
        scheduler = self.pipe.scheduler
        timesteps = [int(t) for t in scheduler.timesteps]
        t, t_prev = timesteps[index], timesteps[index + 1] if index + 1 < len(timesteps) else -1
        alpha_bar = float(scheduler.alphas_cumprod[t])
        alpha_bar_prev = float(scheduler.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        alpha = alpha_bar / alpha_bar_prev
        beta_tilde = (1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha)
        step = Step(index, t, t_prev, alpha, alpha_bar, alpha_bar_prev, 1.0 - alpha, beta_tilde)
        variance = _DDPM_VARIANCES.get(getattr(scheduler.config, "variance_type", None))
        if type(scheduler).__name__ == "DDPMScheduler" and variance is not None:
            step = dataclasses.replace(step, transition=step.ancestral(x, variance))
        return step

    def _negative_rows(self, batch: int) -> torch.Tensor:
        embeds = self.negative_embeds
        if len(embeds) == 1:
            return embeds.expand(batch, *embeds.shape[1:])
        if len(embeds) != batch:
            raise ValueError(f"{len(embeds)} negative prompts for a batch of {batch} images; give one, or one per image")
        return embeds


_DDPM_VARIANCES = {"fixed_small": "beta_tilde", "fixed_large": "beta"}


def _unet_inputs(args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any]:
    if len(args) < 2 or "encoder_hidden_states" not in kwargs:
        raise ValueError("guide_pipeline expects the UNet called as unet(latents, t, encoder_hidden_states=...), as StableDiffusionPipeline does")
    return args[0], args[1]


def _encode(pipe: Any, negative_prompt: str | list[str]) -> torch.Tensor:
    """The negative prompt's text-encoder states [n, 77, D], as the pipeline encodes its prompts."""
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(negative_prompt, pipe._execution_device, 1, False)
    return embeds


def _check_supported(pipe: Any, method: GuidanceMethod) -> None:
    """Refuse, in one line, what this adapter cannot give a method or a scheduler it cannot follow."""
    missing = [name for name in method.needs if name not in PROVIDED]
    if missing:
        raise ValueError(f"method {method.name!r} needs {', '.join(missing)}, which a pipeline cannot give; guide_pipeline provides "
                         f"{', '.join(PROVIDED)} (run it in the harness: bench run --method {method.name})")
    scheduler = pipe.scheduler
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0 or getattr(scheduler, "order", 1) != 1:
        raise ValueError(f"{type(scheduler).__name__} does not step the variance-preserving latents once per UNet call; "
                         "use DDPMScheduler, DDIMScheduler or DPMSolverMultistepScheduler")
    reads_sampler = [name for name in ("means", "variance") if getattr(method.params, name, None) == "sampler"]
    if reads_sampler and type(scheduler).__name__ != "DDPMScheduler":
        raise ValueError(f"{', '.join(f'{n}=sampler' for n in reads_sampler)} reads the sampler's transition, which guide_pipeline knows "
                         f"under DDPMScheduler only, not {type(scheduler).__name__}")
