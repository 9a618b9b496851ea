"""The run lifecycle, written once for one run and for sweeps: plan, resume, draw, merge, judge, store.

A run is split into shards (contiguous sample-id ranges). Each finished shard is saved under the
run's artifacts folder as it arrives, so a run interrupted anywhere resumes with the missing shards
only. Metrics are computed once on all samples in id order, so sharding never changes a number.
Every missing shard of every run is handed to the executor at once, and each run is judged and
stored as soon as its last shard lands.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from negguide.bench.provenance import git_commit, package_versions
from negguide.bench.samplers import SamplerSpec
from negguide.bench.run.executors import Executor, InProcessExecutor
from negguide.bench.run.plan import ResolvedRun, ShardJob
from negguide.bench.run.progress import ProgressBar
from negguide.bench.run.shards import load_shard, pick_device, runtime_for
from negguide.bench.tasks.spec import Judgement, judge
from negguide.methods.errors import BenchError
from negguide.methods.registry import method_class, parameter_table
from negguide.results.artifacts import (
    image_grid_png,
    write_bytes_atomic,
    write_npz_atomic,
)
from negguide.results.store import RunRecord, Store

QUANTILES = {"q05": 0.05, "q25": 0.25, "q50": 0.5, "q75": 0.75, "q95": 0.95}


@dataclass
class RunOutcome:
    run_id: str
    result: dict
    reused: bool


@dataclass
class _Pending:
    """A run being drawn: its jobs, the shards on disk, and when it started."""

    resolved: ResolvedRun
    run_dir: Path
    jobs: list[ShardJob]
    shards: dict[Path, dict[str, np.ndarray]] = field(default_factory=dict)
    resumed: int = 0
    started: float = field(default_factory=time.time)

    @property
    def complete(self) -> bool:
        return len(self.shards) == len(self.jobs)


def artifacts_root(store: Store) -> Path:
    return store.path.parent / "artifacts"


def run_all(runs: list[ResolvedRun], store: Store, executor: Executor | None = None, *, force: bool = False,
            progress: bool = True, device: str | None = None) -> list[RunOutcome]:
    """Run (or reuse) every resolved run; one transaction per run. Outcomes come back in request order."""
    store.check(writing=True)
    outcomes: dict[str, RunOutcome] = {}
    pending: dict[str, _Pending] = {}
    for resolved in runs:
        if resolved.run_id in outcomes or resolved.run_id in pending:
            continue  # a grid that names one point twice draws it once
        if not force and store.run_status(resolved.run_id) == "done":
            outcomes[resolved.run_id] = RunOutcome(resolved.run_id, stored_result(store, resolved.run_id), reused=True)
        else:
            pending[resolved.run_id] = _plan(resolved, store, force, device)
    if pending:
        outcomes.update(_draw(list(pending.values()), store, executor or InProcessExecutor(device), progress, device))
    return [outcomes[resolved.run_id] for resolved in runs]


def run_one(resolved: ResolvedRun, store: Store, executor: Executor | None = None, *, force: bool = False,
            progress: bool = True, device: str | None = None) -> RunOutcome:
    return run_all([resolved], store, executor, force=force, progress=progress, device=device)[0]


def _plan(resolved: ResolvedRun, store: Store, force: bool, device: str | None) -> _Pending:
    """The run's jobs, with shards saved by an earlier attempt counted as done."""
    runtime_for(resolved.task, pick_device(resolved.task, device))  # load models now: a corrupt checkpoint fails before any shard
    run_dir = artifacts_root(store) / resolved.run_id
    shard_dir = run_dir / "shards"
    if force and shard_dir.exists():
        for old in shard_dir.glob("*.npz"):
            old.unlink()
    jobs = resolved.shard_jobs(shard_dir)
    shards = {job.path: data for job in jobs if (data := load_shard(job)) is not None}
    return _Pending(resolved, run_dir, jobs, shards, resumed=len(shards))


def _draw(pending: list[_Pending], store: Store, executor: Executor, progress: bool, device: str | None) -> dict[str, RunOutcome]:
    owner = {job.path: run for run in pending for job in run.jobs}
    todo = [job for run in pending for job in run.jobs if job.path not in run.shards]
    first = pending[0].resolved
    label = f"{first.method.name} on {first.task.name}" if len(pending) == 1 else f"{len(pending)} runs of {first.method.name} on {first.task.name}"
    bar = ProgressBar(sum(run.resolved.samples for run in pending), first.steps, label, progress)
    bar.add_samples(sum(job.size for run in pending for job in run.jobs if job.path in run.shards))
    outcomes: dict[str, RunOutcome] = {}
    sampling_started = time.time()
    try:
        for run in (r for r in pending if r.complete):
            outcomes[run.resolved.run_id] = _finish(run, store, 0.0, device)
        for job, arrays in executor.run(todo, bar):
            write_npz_atomic(job.path, **arrays)  # the driver writes every shard file: one writer, no shared folder needed
            run = owner[job.path]
            run.shards[job.path] = arrays
            if run.complete:  # the other runs' shards keep drawing meanwhile
                outcomes[run.resolved.run_id] = _finish(run, store, time.time() - sampling_started, device)
    finally:
        bar.close()
    return outcomes


def _finish(run: _Pending, store: Store, sampling_seconds: float, device: str | None) -> RunOutcome:
    """Merge a complete run's shards in id order, judge once, write artifacts and the store."""
    resolved, run_dir = run.resolved, run.run_dir
    shards = [run.shards[job.path] for job in run.jobs]
    runtime = runtime_for(resolved.task, pick_device(resolved.task, device))
    x = torch.from_numpy(np.concatenate([s["x"] for s in shards]))
    trace_names = sorted({k for s in shards for k in s if k.startswith("trace__")})
    traces = {k.removeprefix("trace__"): np.concatenate([s[k] for s in shards], axis=1) for k in trace_names}
    trace_t = shards[0]["trace_t"]
    eval_started = time.time()
    judgement = judge(runtime, x, traces, resolved.metrics)
    eval_seconds = time.time() - eval_started
    artifact = runtime.to_artifact(x)
    write_npz_atomic(run_dir / "samples.npz", x=artifact)
    if artifact.ndim == 4:
        write_bytes_atomic(run_dir / "grid.png", image_grid_png(artifact))
    write_npz_atomic(run_dir / "traces.npz", t=trace_t, **traces)
    write_npz_atomic(run_dir / "records.npz", **judgement.records)
    write_bytes_atomic(run_dir / "config.json", json.dumps(resolved.config, indent=2, sort_keys=True).encode())
    finished = time.time()
    timings = {"sampling_s": sampling_seconds, "evaluation_s": eval_seconds, "total_s": finished - run.started,
               "shards_total": len(run.jobs), "shards_resumed": run.resumed}
    record = run_record(resolved, judgement, trace_t, traces, run_dir, timings, run.started, finished)
    store.write_run(record)
    result = stored_result(store, resolved.run_id)
    result.update(shards_total=len(run.jobs), shards_resumed=run.resumed)
    return RunOutcome(resolved.run_id, result, reused=False)


def run_record(resolved: ResolvedRun, judgement: Judgement, trace_t: np.ndarray, traces: dict[str, np.ndarray], run_dir: Path,
               timings: dict, started: float, finished: float, **made_by) -> RunRecord:
    """The store's record of a judged run, built here for runs drawn here and for imported ones; `made_by`
    overrides who made it (method name, git commit, packages, provenance, submitter, method_info)."""
    labels = judgement.records.get("label")
    task = resolved.task
    fields = dict(
        run_id=resolved.run_id, task=task.name, task_version=task.version, method=resolved.method.name, params=resolved.method.params,
        profile=resolved.profile, seed=resolved.seed, samples=resolved.samples, steps=resolved.steps, config=resolved.config,
        timings=timings, started_at=started, finished_at=finished,
        artifacts_dir=str(run_dir), metrics=[m.as_dict() for m in judgement.metrics], traces=summarise_traces(trace_t, traces),
        class_counts=np.bincount(labels, minlength=task.n_classes).tolist() if labels is not None else [], sweep_id=resolved.sweep_id,
        protocol=resolved.protocol, variance=resolved.sampler.variance, sampler=resolved.sampler.to_json(), digests=task.digests(),
        task_info=_task_info(resolved))
    if "method_info" not in made_by:  # an imported run says who made it: its method's code is never loaded for that
        made_by = {"git_commit": git_commit(), "packages": package_versions(), "method_info": _method_info(resolved), **made_by}
    return RunRecord(**{**fields, **made_by})


def _task_info(resolved: ResolvedRun) -> dict:
    task = resolved.task
    return {"version": task.version, "family": task.family, "description": task.description, "removed": task.removed,
            "n_classes": task.n_classes, "metrics": list(task.metrics), "details": task.details(), **task.headline(),
            "protocols": {name: protocol.describe(task.metrics) for name, protocol in task.protocols.items()}}


def _method_info(resolved: ResolvedRun) -> dict:
    cls = method_class(resolved.method.spec)
    return {"summary": cls.summary, "needs": list(cls.needs), "spec": resolved.method.spec,
            "defaults": {row["name"]: row["default"] for row in parameter_table(cls)}}


def summarise_traces(trace_t: np.ndarray, traces: dict[str, np.ndarray]) -> dict[str, dict]:
    """Mean and quantiles over samples of each traced quantity, per recorded step."""
    summary = {}
    for name, values in traces.items():
        values = values.astype(np.float64)
        summary[name] = {"t": trace_t.tolist(), "mean": values.mean(1).tolist(),
                         **{q: np.quantile(values, level, axis=1).tolist() for q, level in QUANTILES.items()}}
    return summary


def _number(value: object) -> float | None:
    """A float for JSON; None where there is no interval."""
    return None if value is None or value != value else float(value)


def stored_sampler(row) -> SamplerSpec:
    """The sampler of a stored run row (rows written before samplers: DDPM with their variance)."""
    return SamplerSpec.from_json(getattr(row, "sampler", None), getattr(row, "variance", None))


def stored_result(store: Store, run_id: str) -> dict:
    """The JSON result of a stored run (what `bench run --json` prints)."""
    runs = store.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    if runs.empty:
        raise BenchError(f"run {run_id} is not in the store {store.path}; `bench runs` lists the stored runs")
    run = runs.iloc[0]
    metrics = store.metrics([run_id])
    timings = json.loads(run.timings) if run.timings else {}
    return {
        "run_id": run_id,
        "task": run.task,
        "task_version": run.task_version,
        "method": run.method,
        "params": json.loads(run.params),
        "defaults_protocol": run.profile,  # the protocol whose samples, steps and seed filled what the command left out
        "samples": int(run.samples),
        "steps": int(run.steps),
        "seed": int(run.seed),
        "protocol": run.protocol if isinstance(run.protocol, str) else None,
        "variance": run.variance if isinstance(run.variance, str) else ("beta_tilde" if not isinstance(run.sampler, str) else None),
        "sampler": stored_sampler(run).as_dict(),
        "metrics": {r.name: r.value for r in metrics.itertuples()},
        "intervals": {r.name: [_number(r.low), _number(r.high)] for r in metrics.itertuples()},
        "interval_methods": {r.name: r.interval for r in metrics.itertuples() if isinstance(r.interval, str)},
        "metric_samples": {r.name: int(r.samples) for r in metrics.itertuples()},
        "artifacts_dir": run.artifacts_dir,
        "timings": timings,
        "shards_total": timings.get("shards_total"),
        "shards_resumed": timings.get("shards_resumed"),
        "git_commit": run.git_commit,
    }



