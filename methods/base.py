"""The step protocol every guidance method implements (DESIGN.md, "The core loop").

A method never touches the model, the scheduler, Ray or the database: it sees the named
predictions of one step, the step's schedule constants, and its own explicit per-sample state.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from bench.schedule import Step

Predictions = dict[str, torch.Tensor]  # "uncond", "neg", ... -> [B, *shape]
State = dict[str, torch.Tensor]  # per-sample tensors, first dimension B


@dataclass(frozen=True)
class Params:
    """Hyperparameters of a method; `scale` is the guidance scale of every method."""

    scale: float = 1.0

    def validate(self) -> None:
        """Raise ValueError naming the bad parameter; subclasses extend."""
        if not scale_is_finite(self.scale):
            raise ValueError(f"scale must be a finite number, got {self.scale}")


def scale_is_finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


class GuidanceMethod:
    """Base class: declare `needs` and `Params`, implement `guide` (and `observe` if stateful)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ("uncond", "neg")
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params | None = None):
        self.params = params if params is not None else self.Params()
        self.params.validate()

    def init_state(self, batch: int, like: torch.Tensor) -> State:
        """Per-sample state before the first step (`like` is x_T, for device and dtype)."""
        return {}

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        """The guided noise prediction for this step, and the state after it."""
        raise NotImplementedError

    def observe(self, step: Step, x: torch.Tensor, x_prev: torch.Tensor, preds: Predictions, state: State) -> State:
        """Update state once x_prev is known (DNG's posterior lives here)."""
        return state

    def trace(self, state: State) -> dict[str, torch.Tensor]:
        """Per-sample scalars recorded each step; by default the state's `guidance_scale`."""
        return {key: state[key] for key in ("guidance_scale", "posterior") if key in state}

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "params": dataclasses.asdict(self.params)}


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a [B] tensor so it broadcasts against [B, *shape]."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def constant(batch: int, value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full((batch,), float(value), dtype=like.dtype, device=like.device)
