"""The one sampling loop every method and sampler runs through (DESIGN.md, "The core loop")."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import torch

from negguide.bench import noise
from negguide.bench.samplers.base import Sampler
from negguide.bench.samplers.registry import DEFAULT_SAMPLER
from negguide.bench.tasks.spec import Conditioning
from negguide.methods.base import GuidanceMethod, guide, init_state, observe
from negguide.methods.schedule import Step

Callback = Callable[[dict], None]
MAX_TRACED_STEPS = 200  # traces keep at most this many rows per run, evenly spread


@dataclass
class Traces:
    """Per-sample trace values, one row per recorded step: name -> [steps, B]."""

    steps: list[int] = field(default_factory=list)  # training timestep t of each recorded row
    values: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def record(self, step: Step, named: dict[str, torch.Tensor]) -> None:
        self.steps.append(step.t)
        for key, value in named.items():
            self.values.setdefault(key, []).append(value.detach().float())

    def arrays(self) -> dict[str, np.ndarray]:
        """Moved off the device once, at the end (a per-step copy would synchronise every step)."""
        return {key: torch.stack(rows).cpu().numpy() for key, rows in self.values.items()}


def sample(
    method: GuidanceMethod,
    conditioning: Conditioning,
    chain: list[Step],
    seed: int,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    callback: Callback | None = None,
    sampler: Sampler | None = None,
) -> tuple[torch.Tensor, Traces]:
    """Draw one batch with `method` and `sampler` (default: DDPM ancestral, beta_tilde).

    Sample i's noise depends only on (seed, its noise key): the initial x_T and the noise of step k,
    whatever the sampler; every tensor lives on `device`, the per-sample state included.
    `conditioning` says which rows these are (noise keys, the denoiser bound to them, positive CFG,
    exact traces). Methods see the transition the sampler takes as `step.transition`.
    """
    sampler = sampler if sampler is not None else DEFAULT_SAMPLER.build()
    keys = conditioning.noise_keys  # rows sharing a key share all their noise (paired arms)
    draw = lambda step_index: noise.gaussian(seed, keys, step_index, shape, device).to(dtype)  # noqa: E731
    x = draw(noise.INITIAL)
    method.prepare_models(conditioning.denoiser)
    state, memory = init_state(method, len(keys), x), sampler.start(len(keys), x)
    traces = Traces()
    trace_every = max(1, len(chain) // MAX_TRACED_STEPS)
    needs = method.needs + tuple(n for n in conditioning.extra_needs if n not in method.needs)
    try:
        for step in chain:
            # The transition first (it depends on x_t and history only), so the method can read it.
            transition = dataclasses.replace(sampler.transition(step, x, memory), fresh_noise=partial(draw, noise.METHOD + step.index))
            step = dataclasses.replace(step, transition=transition)
            preds = conditioning.denoiser(x, step, needs)
            eps, state = guide(method, step, preds, state)
            if conditioning.finalize is not None:  # e.g. positive CFG around the method's output (text-to-image)
                eps = conditioning.finalize(eps, preds)
            x_prev = step.transition.mean(eps)
            if step.transition.variance > 0.0:
                x_prev = x_prev + step.transition.variance**0.5 * draw(step.index)
            memory = sampler.remember(step, x, eps, memory)
            if step.index % trace_every == 0 or step.index == len(chain) - 1:
                named = method.trace(state)
                if conditioning.exact_trace is not None:
                    named = {**named, **conditioning.exact_trace(x, step)}
                traces.record(step, named)
            state = observe(method, step, x, x_prev, preds, state)
            if callback is not None:
                callback({"step": step, "x": x, "x_prev": x_prev, "state": state})
            x = x_prev
    finally:
        method.cleanup_models(conditioning.denoiser)
    return x, traces
