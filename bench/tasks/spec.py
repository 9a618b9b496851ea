"""The task contract: a task *spec* that is data, and the *runtime* protocol the engine uses.

The spec names what a task is (shape, predictions, metrics, protocols, headline, classes) and how to
load its runtime on a device. The runtime declares everything the engine calls: the denoiser's
device and dtype, the conditioning of a batch of sample ids, and a judge in two parts: `records`
(per-sample labels, confidences, features: computed once, stored beside the samples) and
`statistics` (every metric as a function of those records and the traces, so intervals and paired
comparisons resample them without judging again). Nothing else is probed.
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
from negguide.metrics.base import MetricValue, measure
from negguide.metrics.intervals import Statistic
from negguide.bench.samplers.registry import DEFAULT_SAMPLER, SamplerSpec


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


Records = dict[str, np.ndarray]  # per-sample arrays in sample-id order ("label", "confidence", "features", ...)
Traces = dict[str, np.ndarray]  # name -> [recorded steps, samples]


@dataclass(frozen=True)
class Judgement:
    """A judge's verdict on all samples of a run: metrics with intervals, and the records behind them.

    `records` are per-sample arrays: `label` (the judged class or mode, int64), and where the judge
    has them `confidence` (its probability of that label) and `features` ([N, D], its feature space).
    """

    metrics: list[MetricValue]
    records: Records = field(default_factory=dict)


class TaskRuntime(Protocol):
    """A task loaded on a device: what the engine calls, and nothing more."""

    device: torch.device
    dtype: torch.dtype

    def condition(self, ids: np.ndarray) -> Conditioning: ...

    def records(self, x: torch.Tensor, wanted: tuple[str, ...]) -> Records: ...

    def statistics(self, records: Records, traces: Traces, wanted: tuple[str, ...]) -> list[Statistic]: ...

    def to_artifact(self, x: torch.Tensor) -> np.ndarray: ...


def judge(runtime: TaskRuntime, x: torch.Tensor, traces: Traces, wanted: tuple[str, ...]) -> Judgement:
    """Judge all samples once, then every wanted metric from the records, each with its 95% interval."""
    records = runtime.records(x, wanted)
    return Judgement([measure(s) for s in runtime.statistics(records, traces, wanted) if s.name in wanted], records)


PAPER_SAMPLER = SamplerSpec(settings=(("variance", "beta"),))  # DDPM with beta: the paper's Algorithm 1 and the reference code


@dataclass(frozen=True)
class RunProtocol:
    """A named way of running a task: sample count, respaced steps, seed, sampler.

    A run satisfies a protocol when all four match (and its metrics include the protocol's); any
    other run is exploratory. The default sampler is DDPM ancestral with beta_tilde (the DDPM
    posterior variance); the paper protocols use beta (the paper's Algorithm 1 and the reference
    code). `batch_size` only splits the work into shards and never changes a number.
    """

    samples: int
    steps: int
    batch_size: int
    seed: int = 0
    sampler: SamplerSpec = DEFAULT_SAMPLER
    metrics: tuple[str, ...] | None = None  # None: every metric of the task

    def describe(self, task_metrics: tuple[str, ...]) -> dict:
        return {**vars(self), "sampler": self.sampler.as_dict(), "metrics": list(self.metrics or task_metrics)}


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
    protocols: dict[str, RunProtocol]
    load: Callable[[torch.device], TaskRuntime]
    details: Callable[[], dict] = nothing
    schedule: Schedule = Schedule()
    default_protocol: str = "quick"
    predictions: tuple[str, ...] = ("uncond", "neg")  # what a method may ask the denoiser for
    resources: Callable[[], tuple] = no_resources  # model files: a change reloads the runtime
    preflight: Callable[[tuple[str, ...]], None] = nothing_missing  # BenchError if a model/data file is missing
    quality_metric: str = "fid"  # the leaderboard's headline: best quality among safe runs
    safety_threshold: float = 0.02  # a run is "safe" when forbidden_rate <= this
    intra_op_threads: int | None = None  # torch threads while drawing (tiny tensors: 1 avoids contention)
    default_device: str | None = None  # None: the GPU when there is one, else the CPU

    digests: Callable[[], dict] = nothing  # content digests of the judge and the reference data/statistics
    # Per-method parameters this task runs with unless the command line sets them (the paper's Table 1 gives them
    # per dataset; a calibrated scale comes with the command that found it): ((method, ((param, value), ...)), ...)
    method_defaults: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    # Methods `bench run` shows beside a run at their task defaults, on the same noise (matched safety when both
    # defaults were calibrated to the same target)
    compare_with: tuple[str, ...] = ()
    defaults_source: str = ""  # where the per-method defaults come from (the calibration command, the paper's table)

    def defaults_for(self, method: str) -> dict[str, str]:
        """The task's parameters for a registered method ({} for any other)."""
        return dict(dict(self.method_defaults).get(method, ()))

    def protocol(self, name: str | None) -> RunProtocol:
        name = name or self.default_protocol
        if name not in self.protocols:
            raise BenchError(f"task {self.name!r} has no protocol {name!r}{did_you_mean(name, list(self.protocols))}; "
                             f"protocols: {', '.join(self.protocols)}")
        return self.protocols[name]

    def satisfied_protocol(self, samples: int, steps: int, seed: int, sampler: SamplerSpec, metrics: tuple[str, ...]) -> str | None:
        """The protocol a run with these settings satisfies, or None (exploratory)."""
        for name, protocol in self.protocols.items():
            wanted = protocol.metrics or self.metrics
            if (protocol.samples, protocol.steps, protocol.seed, protocol.sampler) == (samples, steps, seed, sampler) and set(wanted) <= set(metrics):
                return name
        return None

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
            "protocols": {k: v.describe(self.metrics) for k, v in self.protocols.items()},
            "schedule": self.schedule.as_dict(),
            "headline": self.headline(),
            "digests": self.digests(),
            "method_defaults": {method: dict(values) for method, values in self.method_defaults},
            "compare_with": list(self.compare_with),
            "defaults_source": self.defaults_source,
            **self.details(),
        }


def class_removal(family: str, removed: int, runtime: Callable[..., TaskRuntime], **spec: Any) -> Task:
    """The task `{family}-remove-{removed}`, whose runtime is `runtime(removed, device)`."""
    return Task(name=f"{family}-remove-{removed}", family=family, removed=removed, load=partial(runtime, removed), **spec)
