"""The task contract: a task *spec* that is data, and the *runtime* protocol the engine uses.

The spec names what a task is (shape, predictions, metrics, profiles, headline, classes) and how to
load its runtime on a device. The runtime declares everything the engine calls: the denoiser's
device and dtype, the conditioning of a batch of sample ids, and a judge that returns the metrics
and the per-sample records once. Nothing else is probed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Protocol

import numpy as np
import torch

from negguide.methods.base import Predictions
from negguide.methods.errors import BenchError, did_you_mean
from negguide.methods.schedule import Schedule, Step
from negguide.metrics.base import MetricValue


class Denoiser(Protocol):
    """Evaluates the named predictions at (x_t, step) for the rows it was conditioned on."""

    def __call__(self, x: torch.Tensor, step: Step, names: tuple[str, ...]) -> Predictions: ...


@dataclass(frozen=True)
class Conditioning:
    """How the sampler draws one batch of sample ids.

    `noise_keys`: rows sharing a key share all their noise (paired arms of text-to-image).
    `extra_needs`: predictions `finalize` uses beyond the method's. `finalize(eps, preds)` runs after
    the method (positive CFG). `exact_trace(x, step)` adds known quantities to the traces (exact tasks).
    """

    denoiser: Denoiser
    noise_keys: np.ndarray
    extra_needs: tuple[str, ...] = ()
    finalize: Callable[[torch.Tensor, Predictions], torch.Tensor] | None = None
    exact_trace: Callable[[torch.Tensor, Step], dict[str, torch.Tensor]] | None = None


@dataclass(frozen=True)
class Judgement:
    """A judge's verdict on all samples of a run, in sample-id order.

    `records` are per-sample arrays: `label` (the judged class or mode, int64), and where the judge
    has them `confidence` (its probability of that label) and `features` ([N, D], its feature space).
    """

    metrics: list[MetricValue]
    records: dict[str, np.ndarray] = field(default_factory=dict)


class TaskRuntime(Protocol):
    """A task loaded on a device: what the engine calls, and nothing more."""

    device: torch.device
    dtype: torch.dtype

    def condition(self, ids: np.ndarray) -> Conditioning: ...

    def judge(self, x: torch.Tensor, traces: dict[str, np.ndarray], wanted: tuple[str, ...]) -> Judgement: ...

    def to_artifact(self, x: torch.Tensor) -> np.ndarray: ...


@dataclass(frozen=True)
class Profile:
    """How much work a run does by default: sample count, respaced steps, batch size."""

    samples: int
    steps: int
    batch_size: int
    metrics: tuple[str, ...] | None = None  # None: every metric of the task


def nothing() -> dict:
    return {}


def no_resources() -> tuple:
    return ()


def nothing_missing(metrics: tuple[str, ...]) -> None:
    return None


@dataclass(frozen=True)
class Task:
    """A task spec: data, plus `load(device) -> TaskRuntime`. Its callables are module-level
    functions or partials of them, so a spec travels to a worker as it is."""

    name: str
    version: str  # changes whenever the task's numbers would
    family: str
    description: str
    shape: tuple[int, ...]
    removed: int
    n_classes: int  # classes (or modes) the judge tells apart; 0 when it gives no labels
    metrics: tuple[str, ...]
    profiles: dict[str, Profile]
    load: Callable[[torch.device], TaskRuntime]
    details: Callable[[], dict] = nothing
    schedule: Schedule = Schedule()
    default_profile: str = "quick"
    predictions: tuple[str, ...] = ("uncond", "neg")  # what a method may ask the denoiser for
    resources: Callable[[], tuple] = no_resources  # model files: a change reloads the runtime
    preflight: Callable[[tuple[str, ...]], None] = nothing_missing  # BenchError if a model/data file is missing
    quality_metric: str = "fid"  # the leaderboard's headline: best quality among safe runs
    safety_threshold: float = 0.02  # a run is "safe" when forbidden_rate <= this
    intra_op_threads: int | None = None  # torch threads while drawing (tiny tensors: 1 avoids contention)
    default_device: str | None = None  # None: the GPU when there is one, else the CPU

    def profile(self, name: str | None) -> Profile:
        name = name or self.default_profile
        if name not in self.profiles:
            raise BenchError(f"task {self.name!r} has no profile {name!r}{did_you_mean(name, list(self.profiles))}; profiles: {', '.join(self.profiles)}")
        return self.profiles[name]

    def headline(self) -> dict:
        return {"quality_metric": self.quality_metric, "safety_threshold": self.safety_threshold}

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "family": self.family,
            "description": self.description,
            "shape": list(self.shape),
            "removed": self.removed,
            "n_classes": self.n_classes,
            "metrics": list(self.metrics),
            "profiles": {k: {**vars(v), "metrics": list(v.metrics or self.metrics)} for k, v in self.profiles.items()},
            "schedule": self.schedule.as_dict(),
            "headline": self.headline(),
            **self.details(),
        }


def class_removal(family: str, removed: int, runtime: Callable[..., TaskRuntime], **spec: Any) -> Task:
    """The task `{family}-remove-{removed}`, whose runtime is `runtime(removed, device)`."""
    return Task(name=f"{family}-remove-{removed}", family=family, removed=removed, load=partial(runtime, removed), **spec)
