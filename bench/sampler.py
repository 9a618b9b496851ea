"""The one DDPM ancestral sampler every method runs through (DESIGN.md, "The core loop")."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from bench import noise
from bench.errors import BenchError
from bench.schedule import Step
from methods.base import GuidanceMethod, Predictions


class Denoiser(Protocol):
    """Evaluates the named predictions at (x_t, step) — one batched forward where possible."""

    def __call__(self, x: torch.Tensor, step: Step, names: tuple[str, ...]) -> Predictions: ...


Callback = Callable[[dict], None]
MAX_TRACED_STEPS = 200  # traces keep at most this many rows per run, evenly spread


@dataclass
class Traces:
    """Per-sample trace values, one row per recorded step: name -> [steps, B]."""

    steps: list[int] = field(default_factory=list)  # training timestep t of each recorded row
    values: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def record(self, step: Step, named: dict[str, torch.Tensor]) -> None:
        self.steps.append(step.t)
        for key, value in named.items():
            self.values.setdefault(key, []).append(value.detach().float().cpu().numpy())

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: np.stack(rows) for key, rows in self.values.items()}


def sample(
    denoiser: Denoiser,
    method: GuidanceMethod,
    chain: list[Step],
    sample_ids: np.ndarray,
    seed: int,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    exact_trace: Callable[[torch.Tensor, Step], dict[str, torch.Tensor]] | None = None,
    callback: Callback | None = None,
    finalize: Callable[[torch.Tensor, Predictions], torch.Tensor] | None = None,
    extra_needs: tuple[str, ...] = (),
    noise_keys: np.ndarray | None = None,
) -> tuple[torch.Tensor, Traces]:
    """Draw the samples `sample_ids` with `method`; noise depends only on (seed, noise key of the sample id)."""
    keys = sample_ids if noise_keys is None else np.asarray(noise_keys)  # samples sharing a key share all their noise (paired arms)
    draw = lambda step_index: noise.gaussian(seed, keys, step_index, shape).to(device=device, dtype=dtype)  # noqa: E731
    x = draw(noise.INITIAL)
    state = method.init_state(len(sample_ids), x)
    traces = Traces()
    trace_every = max(1, len(chain) // MAX_TRACED_STEPS)
    needs = method.needs + tuple(n for n in extra_needs if n not in method.needs)
    for step in chain:
        # Predictions the method needs, guided eps, then the ancestral update (Ho et al. 2020, Alg. 2).
        preds = denoiser(x, step, needs)
        eps, state = method.guide(step, preds, state)
        if finalize is not None:  # e.g. positive CFG around the method's output (text-to-image)
            eps = finalize(eps, preds)
        x_prev = step.mean(x, eps)
        if step.beta_tilde > 0.0:
            x_prev = x_prev + step.beta_tilde**0.5 * draw(step.index)
        if not torch.isfinite(x_prev).all():
            raise BenchError(f"method {method.name!r} produced NaN or inf at step {step.index} (t={step.t}); lower the scale or check the parameters")
        if step.index % trace_every == 0 or step.index == len(chain) - 1:
            named = method.trace(state)
            if exact_trace is not None:
                named = {**named, **exact_trace(x, step)}
            traces.record(step, named)
        state = method.observe(step, x, x_prev, preds, state)
        if callback is not None:
            callback({"step": step, "x": x, "x_prev": x_prev, "state": state})
        x = x_prev
    return x, traces
