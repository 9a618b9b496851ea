"""The sampler contract: given a step's guided noise prediction, where x_t goes (DESIGN.md, "sampler").

A sampler declares its `Settings` (a frozen dataclass, validated) and, per step, the `Transition` it
takes from x_t: the mean of x_prev for any eps and the variance of the noise it adds. The loop draws
that noise from the counter-based generator at the step's index, so a sample depends only on
(seed, its noise key) whatever the sampler. A multistep sampler keeps its history in explicit
per-batch `memory` (like a method's state), updated by `remember` once the guided eps is known.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from negguide.methods.schedule import Step, Transition

Memory = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    """A sampler's settings; subclasses add fields with defaults and extend `validate`."""

    def validate(self) -> None:
        """Raise ValueError naming the bad setting."""


class Sampler:
    """Base class: set `name`, `summary`, `reference`, `Settings`; implement `transition`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    Settings: ClassVar[type[Settings]] = Settings
    min_steps: ClassVar[int] = 1  # fewest respaced steps the sampler can take

    def __init__(self, settings: Settings | None = None):
        self.settings = settings if settings is not None else self.Settings()
        self.settings.validate()

    def start(self, batch: int, like: torch.Tensor) -> Memory:
        """History before the first step (single-step samplers keep none)."""
        return {}

    def transition(self, step: Step, x: torch.Tensor, memory: Memory) -> Transition:
        """The step x_t -> x_prev this sampler takes, as an affine function of eps plus noise."""
        raise NotImplementedError

    def remember(self, step: Step, x: torch.Tensor, eps: torch.Tensor, memory: Memory) -> Memory:
        """History after the step, once its guided eps is known."""
        return memory

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "settings": dataclasses.asdict(self.settings)}
