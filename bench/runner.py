"""From a request to stored results: resolve, shard, sample, evaluate, write once.

A run is split into shards (contiguous sample-index ranges). Each finished shard is saved under
the run's artifacts folder, so a run interrupted anywhere resumes with the missing shards only.
Metrics are computed once on all samples in index order, so sharding never changes a number.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from bench.artifacts import image_grid_png, read_npz, write_bytes_atomic, write_npz_atomic
from bench.errors import BenchError
from bench.provenance import git_commit, package_versions
from bench.sampler import sample
from bench.tasks import Task, TaskRuntime, get_task
from methods.base import GuidanceMethod
from methods.registry import load_method, method_class
from results.store import RunRecord, Store

QUANTILES = {"q05": 0.05, "q25": 0.25, "q50": 0.5, "q75": 0.75, "q95": 0.95}


@dataclass(frozen=True)
class RunRequest:
    """What a user asks for; None means the task profile's default."""

    task: str
    method: str
    params: dict[str, str] = field(default_factory=dict)
    samples: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    seed: int = 0
    profile: str | None = None
    sweep_id: str | None = None


@dataclass(frozen=True)
class ResolvedRun:
    """A validated request: every value that determines the results, and the run's id."""

    task: Task
    method: GuidanceMethod
    method_spec: str
    profile: str
    samples: int
    steps: int
    batch_size: int
    seed: int
    sweep_id: str | None

    @property
    def config(self) -> dict:
        """The fully resolved config: the run id hashes exactly this."""
        return {
            "task": self.task.name,
            "task_version": self.task.version,
            "method": self.method.name,
            "method_spec": self.method_spec,
            "method_source": _method_source_digest(self.method_spec),
            "params": self.method.config()["params"],
            "samples": self.samples,
            "steps": self.steps,
            "seed": self.seed,
            "schedule": self.task.schedule.as_dict(),
            "metrics": list(self.metrics),
        }

    @property
    def run_id(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.task.profile(self.profile).metrics or self.task.metrics

    def shards(self) -> list[tuple[int, int]]:
        return [(start, min(start + self.batch_size, self.samples)) for start in range(0, self.samples, self.batch_size)]


def _method_source_digest(spec: str) -> str | None:
    """A user's method file is part of the config: editing it must not reuse old results."""
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        return hashlib.sha256(Path(spec.split(":", 1)[0]).read_bytes()).hexdigest()[:16]
    return None


def resolve(request: RunRequest) -> ResolvedRun:
    """Validate a request completely before anything runs or is written."""
    task = get_task(request.task)
    profile = task.profile(request.profile)
    task.preflight(profile.metrics or task.metrics)
    method = load_method(request.method, request.params)
    missing = set(method.needs) - set(task.predictions)
    if missing:
        raise BenchError(f"method {method.name!r} needs predictions {sorted(missing)} that task {task.name!r} does not provide; pick an exact task (gmm*) or another method")
    samples = profile.samples if request.samples is None else request.samples
    steps = profile.steps if request.steps is None else request.steps
    batch_size = profile.batch_size if request.batch_size is None else request.batch_size
    if samples <= 0:
        raise BenchError(f"--samples must be a positive integer, got {samples}")
    if not 1 <= steps <= task.schedule.T:
        raise BenchError(f"--steps must be between 1 and T={task.schedule.T}, got {steps}")
    if batch_size <= 0:
        raise BenchError(f"--batch-size must be a positive integer, got {batch_size}")
    return ResolvedRun(task, method, request.method, request.profile or task.default_profile, samples, steps, min(batch_size, samples), request.seed, request.sweep_id)


# ---- shards -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to draw one shard (plain data: it travels to Ray workers)."""

    task: str
    method_spec: str
    params: dict
    steps: int
    seed: int
    start: int
    stop: int
    path: str


def _runtime(task_name: str) -> TaskRuntime:
    """Loaded models are reused across the shards a process draws (until their files change)."""
    return _cached_runtime(task_name, get_task(task_name).resources())


@lru_cache(maxsize=4)
def _cached_runtime(task_name: str, resources: tuple) -> TaskRuntime:
    return get_task(task_name).load()


def draw_shard(job: ShardJob, on_step: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Draw samples [start, stop): the arrays a shard file holds (samples, traced steps, traces)."""
    task = get_task(job.task)
    runtime = _runtime(job.task)
    method = _method(job)
    chain = task.schedule.steps(job.steps)
    callback = (lambda info: on_step(job.stop - job.start)) if on_step else None
    ids = np.arange(job.start, job.stop)
    if hasattr(runtime, "bind_samples"):  # per-sample conditioning: the prompt and arm of each sample (text-to-image)
        runtime.bind_samples(ids)
    x, traces = sample(runtime.denoiser, method, chain, ids, job.seed, task.shape,
                       dtype=runtime.dtype, exact_trace=runtime.exact_trace, callback=callback,
                       finalize=getattr(runtime, "finalize", None), extra_needs=getattr(runtime, "extra_needs", ()),
                       noise_keys=runtime.noise_keys(ids) if hasattr(runtime, "noise_keys") else None)
    arrays = {f"trace__{k}": v for k, v in traces.arrays().items()}
    return {"x": x.cpu().numpy(), "trace_t": np.asarray(traces.steps), "start": np.asarray(job.start), "stop": np.asarray(job.stop), **arrays}


def run_shard(job: ShardJob, on_step: Callable[[int], None] | None = None) -> str:
    """Draw one shard and save it atomically; returns the shard path."""
    write_npz_atomic(Path(job.path), **draw_shard(job, on_step))
    return job.path


def shard_jobs(resolved: ResolvedRun, shard_dir: Path) -> list[ShardJob]:
    """One job per shard of a resolved run, saved under `shard_dir`."""
    params = resolved.method.config()["params"]
    return [ShardJob(resolved.task.name, resolved.method_spec, params, resolved.steps, resolved.seed, start, stop,
                     str(shard_dir / f"{start:09d}-{stop:09d}.npz")) for start, stop in resolved.shards()]


def _method(job: ShardJob) -> GuidanceMethod:
    """The job's method, its class resolved once (a user's file is executed once per shard)."""
    cls = method_class(job.method_spec)
    return cls(cls.Params(**job.params))


def _load_shard(path: Path, job: ShardJob) -> dict[str, np.ndarray] | None:
    """A saved shard if it is complete and belongs to this job; corrupt files are not trusted."""
    if not path.exists():
        return None
    data = read_npz(path)
    if data is None or "x" not in data or int(data.get("start", -1)) != job.start or int(data.get("stop", -1)) != job.stop or len(data["x"]) != job.stop - job.start:
        warnings.warn(f"shard file {path} is truncated or corrupt; recomputing it", stacklevel=2)
        path.unlink(missing_ok=True)
        return None
    return data


class InProcessExecutor:
    """Draws shards one after another in this process."""

    def run(self, jobs: list[ShardJob], progress: "Progress") -> Iterator[ShardJob]:
        for job in jobs:
            run_shard(job, on_step=progress.step_of(job))
            yield job

    def close(self) -> None:
        """Nothing to release in-process."""


# ---- progress -----------------------------------------------------------------------------

class Progress:
    """One bar over all shards, with images/s and an ETA (tqdm, on stderr).

    It counts sample-steps (integers, so the bar never overshoots) and shows them as images.
    """

    def __init__(self, total_samples: int, steps: int, label: str, enabled: bool):
        from tqdm import tqdm

        self.steps = steps
        # Redraw at most once a second on a terminal, every 30 s into a log file.
        interval = 1.0 if sys.stderr.isatty() else 30.0
        self.bar = tqdm(total=total_samples * steps, unit="img", unit_scale=1.0 / steps, desc=label, disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True, smoothing=0.1, mininterval=interval)

    def step_of(self, job: ShardJob) -> Callable[[int], None]:
        """A per-step callback advancing the bar by the shard's samples for one step."""
        return lambda batch: self.bar.update(batch)

    def add_samples(self, count: int) -> None:
        """Whole samples done at once (resumed shards, or shards finished by workers)."""
        self.bar.update(count * self.steps)

    def shard_done(self, job: ShardJob, counted_steps: bool) -> None:
        if not counted_steps:
            self.add_samples(job.stop - job.start)

    def close(self) -> None:
        self.bar.close()


# ---- run ----------------------------------------------------------------------------------

@dataclass
class RunOutcome:
    run_id: str
    result: dict
    reused: bool


def artifacts_root(store: Store) -> Path:
    return store.path.parent / "artifacts"


def execute(resolved: ResolvedRun, store: Store, *, force: bool = False, executor=None, progress: bool = True) -> RunOutcome:
    """Run (or reuse) one resolved run and store it in one transaction."""
    run_id = resolved.run_id
    run_dir = artifacts_root(store) / run_id
    if not force and store.run_status(run_id) == "done":
        return RunOutcome(run_id, stored_result(store, run_id), reused=True)
    started = time.time()
    _runtime(resolved.task.name)  # load models now: a corrupt checkpoint fails before any output
    shard_dir = run_dir / "shards"
    if force and shard_dir.exists():
        for old in shard_dir.glob("*.npz"):
            old.unlink()
    jobs = shard_jobs(resolved, shard_dir)
    done = {job.path: data for job in jobs if (data := _load_shard(Path(job.path), job)) is not None}
    todo = [job for job in jobs if job.path not in done]
    bar = Progress(resolved.samples, resolved.steps, f"{resolved.method.name} on {resolved.task.name}", progress)
    bar.add_samples(sum(j.stop - j.start for j in jobs if j.path in done))
    executor = executor or InProcessExecutor()
    sampling_started = time.time()
    try:
        for job in executor.run(todo, bar):
            bar.shard_done(job, counted_steps=isinstance(executor, InProcessExecutor))
    finally:
        bar.close()
    sampling_seconds = time.time() - sampling_started
    for job in todo:
        data = _load_shard(Path(job.path), job)
        if data is None:
            raise BenchError(f"shard {job.start}-{job.stop} of run {run_id} was not written; run the command again to resume")
        done[job.path] = data
    shards = [done[job.path] for job in jobs]
    return _finish(resolved, store, run_dir, shards, started, sampling_seconds, len(jobs), len(jobs) - len(todo))


def _finish(resolved: ResolvedRun, store: Store, run_dir: Path, shards: list[dict], started: float,
            sampling_seconds: float, shards_total: int, shards_resumed: int) -> RunOutcome:
    runtime = _runtime(resolved.task.name)
    x = torch.from_numpy(np.concatenate([s["x"] for s in shards]))
    trace_names = sorted({k for s in shards for k in s if k.startswith("trace__")})
    traces = {k.removeprefix("trace__"): np.concatenate([s[k] for s in shards], axis=1) for k in trace_names}
    trace_t = shards[0]["trace_t"]
    eval_started = time.time()
    metrics = runtime.evaluate(x, traces, resolved.metrics)
    eval_seconds = time.time() - eval_started
    artifact = runtime.to_artifact(x)
    write_npz_atomic(run_dir / "samples.npz", x=artifact)
    if artifact.ndim == 4:
        write_bytes_atomic(run_dir / "grid.png", image_grid_png(artifact))
    write_npz_atomic(run_dir / "traces.npz", t=trace_t, **traces)
    write_bytes_atomic(run_dir / "config.json", json.dumps(resolved.config, indent=2, sort_keys=True).encode())
    labels = runtime.class_labels(x) if hasattr(runtime, "class_labels") else None
    counts = np.bincount(labels, minlength=resolved.task.describe().get("n_classes", 0)).tolist() if labels is not None else []
    finished = time.time()
    timings = {"sampling_s": sampling_seconds, "evaluation_s": eval_seconds, "total_s": finished - started,
               "shards_total": shards_total, "shards_resumed": shards_resumed}
    record = RunRecord(
        run_id=resolved.run_id, task=resolved.task.name, task_version=resolved.task.version, method=resolved.method.name,
        params=resolved.method.config()["params"], profile=resolved.profile, seed=resolved.seed, samples=resolved.samples,
        steps=resolved.steps, config=resolved.config, git_commit=git_commit(), packages=package_versions(), timings=timings,
        started_at=started, finished_at=finished, artifacts_dir=str(run_dir), metrics=[m.as_dict() for m in metrics],
        traces=summarise_traces(trace_t, traces), class_counts=counts, sweep_id=resolved.sweep_id,
    )
    store.write_run(record)
    result = stored_result(store, resolved.run_id)
    result.update(shards_total=shards_total, shards_resumed=shards_resumed)
    return RunOutcome(resolved.run_id, result, reused=False)


def summarise_traces(trace_t: np.ndarray, traces: dict[str, np.ndarray]) -> dict[str, dict]:
    """Mean and quantiles over samples of each traced quantity, per recorded step."""
    summary = {}
    for name, values in traces.items():
        values = values.astype(np.float64)
        summary[name] = {"t": trace_t.tolist(), "mean": values.mean(1).tolist(),
                         **{q: np.quantile(values, level, axis=1).tolist() for q, level in QUANTILES.items()}}
    return summary


def stored_result(store: Store, run_id: str) -> dict:
    """The JSON result of a stored run (what `bench run --json` prints)."""
    run = store.query("SELECT * FROM runs WHERE run_id = ?", [run_id]).iloc[0]
    metrics = store.metrics([run_id])
    timings = json.loads(run.timings) if run.timings else {}
    return {
        "run_id": run_id,
        "task": run.task,
        "task_version": run.task_version,
        "method": run.method,
        "params": json.loads(run.params),
        "profile": run.profile,
        "samples": int(run.samples),
        "steps": int(run.steps),
        "seed": int(run.seed),
        "metrics": {r.name: r.value for r in metrics.itertuples()},
        "metric_samples": {r.name: int(r.samples) for r in metrics.itertuples()},
        "artifacts_dir": run.artifacts_dir,
        "timings": timings,
        "shards_total": timings.get("shards_total"),
        "shards_resumed": timings.get("shards_resumed"),
        "git_commit": run.git_commit,
    }


def run(request: RunRequest, store: Store, *, force: bool = False, progress: bool = True, executor=None) -> RunOutcome:
    return execute(resolve(request), store, force=force, progress=progress, executor=executor)


def expand_sweep(base: RunRequest, grid: dict[str, list[str]]) -> list[RunRequest]:
    """The cartesian product of parameter values, each point a request sharing a sweep id."""
    import itertools

    keys = list(grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    digest = hashlib.sha256(json.dumps([base.task, base.method, base.params, grid], sort_keys=True).encode()).hexdigest()[:12]
    return [RunRequest(**{**base.__dict__, "params": {**base.params, **point}, "sweep_id": digest}) for point in points]


def iter_requests(requests: Iterable[RunRequest]) -> list[ResolvedRun]:
    """Resolve every request first: a bad grid point fails before any run starts."""
    return [resolve(r) for r in requests]
