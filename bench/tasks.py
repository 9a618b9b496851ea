"""Task registry: what a task names (data, models, judge, metrics, profiles) and how it loads.

Heavy tasks register a loader that imports their models only when the task is run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from bench.errors import BenchError, did_you_mean
from bench.sampler import Denoiser
from bench.schedule import Schedule, Step
from metrics.base import MetricValue


@dataclass(frozen=True)
class Profile:
    """How much work a run does by default: sample count, respaced steps, batch size."""

    samples: int
    steps: int
    batch_size: int
    metrics: tuple[str, ...] | None = None  # None: every metric of the task


class TaskRuntime(Protocol):
    """A loaded task: the denoiser, how to judge samples, and how to store them.

    Optional: `finalize(eps, preds) -> eps` applied after the method (text-to-image positive
    CFG), with `extra_needs` naming predictions it uses beyond the method's.
    """

    denoiser: Denoiser
    dtype: torch.dtype

    def exact_trace(self, x: torch.Tensor, step: Step) -> dict[str, torch.Tensor]: ...

    def evaluate(self, x: torch.Tensor, traces: dict[str, np.ndarray], wanted: tuple[str, ...]) -> list[MetricValue]: ...

    def to_artifact(self, x: torch.Tensor) -> np.ndarray: ...


@dataclass(frozen=True)
class Task:
    name: str
    version: str  # changes whenever the task's numbers would
    family: str
    description: str
    shape: tuple[int, ...]
    removed: int
    metrics: tuple[str, ...]
    profiles: dict[str, Profile]
    load: Callable[[], TaskRuntime]
    details: Callable[[], dict] = field(default=lambda: {})
    schedule: Schedule = Schedule()
    default_profile: str = "quick"
    predictions: tuple[str, ...] = ("uncond", "neg")  # what a method may ask the denoiser for
    resources: Callable[[], tuple] = field(default=lambda: ())  # model paths: a change reloads the runtime
    preflight: Callable[[tuple[str, ...]], None] = field(default=lambda metrics: None)  # BenchError if a model/data file is missing
    quality_metric: str = "fid"  # the leaderboard's headline: best quality among safe runs
    safety_threshold: float = 0.02  # a run is "safe" when forbidden_rate <= this

    def profile(self, name: str | None) -> Profile:
        name = name or self.default_profile
        if name not in self.profiles:
            raise BenchError(f"task {self.name!r} has no profile {name!r}{did_you_mean(name, list(self.profiles))}; profiles: {', '.join(self.profiles)}")
        return self.profiles[name]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "family": self.family,
            "description": self.description,
            "shape": list(self.shape),
            "removed": self.removed,
            "metrics": list(self.metrics),
            "profiles": {k: {**vars(v), "metrics": list(v.metrics or self.metrics)} for k, v in self.profiles.items()},
            "schedule": self.schedule.as_dict(),
            "headline": {"quality_metric": self.quality_metric, "safety_threshold": self.safety_threshold},
            **self.details(),
        }


_TASKS: dict[str, Task] = {}
_FAMILY_MODULES = ("bench.task_gmm", "bench.task_mnist", "bench.task_cifar10", "bench.task_t2i", "bench.task_gmm_prompts")


def register(task: Task) -> None:
    if task.name in _TASKS:
        raise BenchError(f"task {task.name!r} is registered twice")
    _TASKS[task.name] = task


def _ensure_loaded() -> None:
    """Import every family module once (a module imported directly first registers only itself)."""
    import importlib

    for module in _FAMILY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a family module that exists but fails is a real error
                raise


def all_tasks() -> dict[str, Task]:
    _ensure_loaded()
    return dict(_TASKS)


def get_task(name: str) -> Task:
    tasks = all_tasks()
    if name not in tasks:
        raise BenchError(f"unknown task {name!r}{did_you_mean(name, list(tasks))}; `bench list tasks` shows all")
    return tasks[name]
