"""From a request to a resolved run and its shard jobs: everything validated before anything runs.

A resolved run carries the task spec and a method spec (name or file, source digest, parameters);
a shard job carries both to whichever process draws it, so nothing is looked up or rebuilt by name
there. The run id hashes the resolved config.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from negguide.bench.samplers import SamplerSpec, sampler_class
from negguide.bench.tasks import Task, TaskOptions, all_tasks, get_task
from negguide.methods.errors import BenchError
from negguide.methods.registry import MethodSpec, method_class
from negguide.results.bundle import config_run_id


@dataclass(frozen=True)
class RunRequest:
    """What a user asks for; None means the protocol's value (the task's default protocol unless named)."""

    task: str
    method: str
    params: dict[str, str] = field(default_factory=dict)
    samples: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    protocol: str | None = None
    sampler: str | None = None  # sampler name (None: the protocol's)
    sampler_params: dict[str, str] = field(default_factory=dict)  # the sampler's settings, e.g. {"eta": "0"}
    variance: str | None = None  # shorthand for DDPM's `variance` setting (beta_tilde or beta)
    sweep_id: str | None = None
    prompts: Path | None = None  # text-to-image prompt file (None: $BENCH_PROMPTS or the shipped scenes)


@dataclass(frozen=True)
class ResolvedRun:
    """A validated request: every value that determines the results, and the run's id."""

    task: Task
    method: MethodSpec
    profile: str  # the protocol the defaults came from
    samples: int
    steps: int
    batch_size: int
    seed: int
    sampler: SamplerSpec = SamplerSpec()
    sweep_id: str | None = None

    @property
    def config(self) -> dict:
        """The fully resolved config: the run id hashes exactly this.

        The sampler appears only when it is not the default (DDPM ancestral, beta_tilde), so runs
        stored before samplers were an option keep their ids."""
        return {**self.sampler.hashed(),
            "task": self.task.name,
            "task_version": self.task.version,
            "method": self.method.name,
            "method_spec": self.method.spec,
            "method_source": self.method.source_digest,
            "params": self.method.params,
            "samples": self.samples,
            "steps": self.steps,
            "seed": self.seed,
            "schedule": self.task.schedule.as_dict(),
            "metrics": list(self.metrics),
        }

    @property
    def run_id(self) -> str:
        return config_run_id(self.config)

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.task.protocol(self.profile).metrics or self.task.metrics

    @property
    def protocol(self) -> str | None:
        """The protocol this run satisfies, or None: an exploratory run."""
        return self.task.satisfied_protocol(self.samples, self.steps, self.seed, self.sampler, self.metrics)

    def job(self, start: int, stop: int, path: Path) -> ShardJob:
        """The job drawing samples [start, stop) of this run into `path`."""
        return ShardJob(self.task, self.method, self.steps, self.seed, self.sampler, start, stop, path)

    def shard_jobs(self, shard_dir: Path) -> list[ShardJob]:
        """One job per contiguous range of sample ids, saved under `shard_dir`."""
        return [self.job(start, stop, shard_dir / f"{start:09d}-{stop:09d}.npz")
                for start in range(0, self.samples, self.batch_size) for stop in [min(start + self.batch_size, self.samples)]]


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to draw samples [start, stop) of one run."""

    task: Task
    method: MethodSpec
    steps: int
    seed: int
    sampler: SamplerSpec
    start: int
    stop: int
    path: Path

    @property
    def size(self) -> int:
        return self.stop - self.start


def resolve(request: RunRequest) -> ResolvedRun:
    """Validate a request completely before anything runs or is written."""
    task = get_task(request.task, TaskOptions(request.prompts))
    protocol = task.protocol(request.protocol)
    sampler = resolve_sampler(request, protocol.sampler)
    params = {**sampler_followed(request.method, sampler), **task.defaults_for(request.method), **request.params}
    method = MethodSpec.of(request.method, params)
    _check_provided(method, task, TaskOptions(request.prompts))
    task.preflight(protocol.metrics or task.metrics)
    samples = protocol.samples if request.samples is None else request.samples
    steps = protocol.steps if request.steps is None else request.steps
    batch_size = protocol.batch_size if request.batch_size is None else request.batch_size
    seed = protocol.seed if request.seed is None else request.seed
    if samples <= 0:
        raise BenchError(f"--samples must be a positive integer, got {samples}")
    lowest = sampler_class(sampler.name).min_steps
    if not lowest <= steps <= task.schedule.T:
        raise BenchError(f"--steps must be between {lowest} and T={task.schedule.T} for sampler {sampler.name!r}, got {steps}")
    if batch_size <= 0:
        raise BenchError(f"--batch-size must be a positive integer, got {batch_size}")
    check_run_size(task, samples, steps, seed)
    return ResolvedRun(task, method, request.protocol or task.default_protocol, samples, steps, min(batch_size, samples), seed, sampler, request.sweep_id)


def sampler_followed(method: str, sampler: SamplerSpec) -> dict[str, str]:
    """The method's parameters that take the sampler's settings of the same meaning (`Params.follows_sampler`)."""
    settings = dict(sampler.settings)
    follows = method_class(method).Params.follows_sampler
    return {param: str(settings[setting]) for param, setting in follows.items() if setting in settings}


def resolve_sampler(request: RunRequest, default: SamplerSpec) -> SamplerSpec:
    """The request's sampler spec: its name and settings, or the protocol's; `--variance` is DDPM's setting."""
    if request.sampler is None and not request.sampler_params and request.variance is None:
        return default
    name = request.sampler or default.name
    settings = dict(request.sampler_params)
    if request.variance is not None:
        if name != "ddpm":
            raise BenchError(f"--variance is a setting of the ddpm sampler; for {name!r} use --sampler-param (`bench describe sampler {name}`)")
        settings.setdefault("variance", request.variance)
    if default.name == name:
        settings = {**dict(default.settings), **settings}  # settings on top of the protocol's sampler
    return SamplerSpec.of(name, settings)


MAX_SEED = 2**63 - 1  # seeds are stored as BIGINT and hashed as 64-bit words
MEMORY_SHARE = 0.5  # a run may hold at most this share of the machine's memory


def check_run_size(task: Task, samples: int, steps: int, seed: int) -> None:
    """Seed within 0..2**63-1, and a run whose arrays fit in memory, refused before any work with the estimate."""
    if not 0 <= seed <= MAX_SEED:
        raise BenchError(f"--seed must be between 0 and 2**63-1 ({MAX_SEED}), got {seed}")
    from negguide.bench.sampler import MAX_TRACED_STEPS

    # The engine holds every sample (shards, merged, artifact) and every traced step until it judges them.
    values = 1
    for n in task.shape:
        values *= n
    estimate = samples * 8 * (3 * values + 4 * min(steps, MAX_TRACED_STEPS))
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if estimate > MEMORY_SHARE * available:
        largest = int(MEMORY_SHARE * available // (8 * (3 * values + 4 * min(steps, MAX_TRACED_STEPS))))
        raise BenchError(f"--samples {samples} would hold about {estimate / 1e9:.1f} GB in memory (all samples and traces until judged); "
                         f"this machine has {available / 1e9:.1f} GB: give --samples {largest} or fewer")


def _check_provided(method: MethodSpec, task: Task, options: TaskOptions) -> None:
    """Refuse a method needing predictions the task lacks, naming the tasks that have them (before any model loads)."""
    needs = _method_needs(method)
    missing = set(needs) - set(task.predictions)
    if not missing:
        return
    providers = [name for name, other in all_tasks(options).items() if set(needs) <= set(other.predictions)]
    where = f"tasks that do: {', '.join(providers[:6])}{f' (+{len(providers) - 6} more)' if len(providers) > 6 else ''}" if providers else "no task does"
    raise BenchError(f"method {method.name!r} needs predictions {sorted(missing)} that task {task.name!r} does not provide "
                     f"(it provides {', '.join(task.predictions)}); {where}")


def _method_needs(method: MethodSpec) -> tuple[str, ...]:
    from negguide.methods.registry import method_class

    return method_class(method.spec).needs


def expand_sweep(base: RunRequest, grid: dict[str, list[str]]) -> list[RunRequest]:
    """The cartesian product of parameter values, each point a request sharing a sweep id."""
    keys = list(grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    digest = hashlib.sha256(json.dumps([base.task, base.method, base.params, grid], sort_keys=True).encode()).hexdigest()[:12]
    return [replace(base, params={**base.params, **point}, sweep_id=digest) for point in points]


def resolve_all(requests: list[RunRequest]) -> list[ResolvedRun]:
    """Resolve every request first: a bad grid point fails before any run starts."""
    return [resolve(r) for r in requests]
