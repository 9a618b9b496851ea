"""Shards on Ray: a local cluster (`--workers N`) or an existing one (`--ray-address`).

Each shard is one Ray task. The worker draws the samples and returns the arrays; the driver writes
the shard file (atomically) as each result arrives, then the DuckDB row once a run is complete.
Why the driver writes: it works unchanged on several machines without a shared folder, a worker
that dies mid-shard leaves nothing half-written, and every file under the artifacts folder has one
writer. The cost is that shard arrays travel through Ray's object store (about 1 MB per MNIST shard).
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import ray
import torch

from bench.artifacts import write_npz_atomic
from bench.errors import BenchError
from bench.runner import (InProcessExecutor, Progress, ResolvedRun, RunOutcome, ShardJob, _finish, _load_shard, _runtime,
                          artifacts_root, draw_shard, shard_jobs, stored_result)
from results.store import Store

OBJECT_STORE_BYTES = 80 * 1024**2  # shards are small; Ray's default (30% of RAM) is far too much here
CONNECT_TIMEOUT_S = 3.0
MAX_RETRIES = 3  # a shard whose worker process dies is re-run this many times
CPUS_PER_SHARD = 1


def _shard_task(job: ShardJob, threads: int) -> dict[str, np.ndarray]:
    """Runs in a Ray worker: one shard with as many torch threads as CPUs the task asked for."""
    torch.set_num_threads(threads)
    return draw_shard(job)


# ---- connecting ---------------------------------------------------------------------------

def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of 'host:port' or 'ray://host:port'; None for 'auto' and other forms."""
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    return (host.strip("[]"), int(port)) if sep and host and port.isdigit() else None


def _unreachable(address: str, reason: object) -> BenchError:
    first_line = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    return BenchError(f"could not reach Ray cluster at {address}: {first_line}; start one with `ray start --head` "
                      "or drop --ray-address (and unset RAY_ADDRESS)")


def _probe(address: str) -> None:
    """Fail fast when nothing listens at the address: ray.init would retry for minutes."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise _unreachable(address, exc.strerror or exc) from None


def _quiet_init(**kwargs) -> None:
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, **kwargs)


def _join(address: str) -> None:
    """Connect this process to a running cluster (already probed)."""
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise _unreachable(address, exc) from None


def _start_local(workers: int) -> None:
    """Start a private single-machine cluster sized for `workers` shards at once."""
    # Ray starts workers at nice 15; a shard should get the CPU share it gets in-process (nice 0).
    os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        _quiet_init(address="local", num_cpus=workers, object_store_memory=OBJECT_STORE_BYTES, _node_ip_address="127.0.0.1")
    except Exception as exc:  # Ray raises a bare Exception when its processes start too slowly
        ray.shutdown()
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise BenchError(f"could not start a local Ray cluster with {workers} workers: {first_line}; "
                         "try again when the machine is less busy, or drop --workers to run in-process") from None


# ---- executor -----------------------------------------------------------------------------

class RayExecutor:
    """Draws shards as Ray tasks; same protocol as InProcessExecutor (run, close).

    With `address` (or RAY_ADDRESS) it joins that cluster, else it starts a local one with
    `workers` CPUs; a Ray connection this process already has is reused. `workers` also caps
    the shards in flight, so `--workers 1` on a big cluster runs one shard at a time.
    """

    def __init__(self, workers: int | None = None, address: str | None = None):
        if workers is not None and workers < 1:
            raise BenchError(f"--workers must be >= 1, got {workers}")
        # Ray 2.x otherwise turns on token auth and writes a token under $HOME.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            _probe(address)  # the user named a cluster: it must be there, connected or not
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            _join(address) if address else _start_local(workers or os.cpu_count() or 1)
        self.workers = workers
        self.uses_gpus = ray.cluster_resources().get("GPU", 0) >= 1
        self._task = ray.remote(_shard_task)

    def _submit(self, job: ShardJob) -> ray.ObjectRef:
        resources = {"num_gpus": 1, "num_cpus": CPUS_PER_SHARD} if self.uses_gpus else {"num_cpus": CPUS_PER_SHARD}
        return self._task.options(max_retries=MAX_RETRIES, **resources).remote(job, CPUS_PER_SHARD)

    def _collect(self, ref: ray.ObjectRef, job: ShardJob) -> dict[str, np.ndarray]:
        """A finished shard's arrays; a method's own error comes back as itself."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, BenchError):
                raise exc.cause from None
            raise
        except ray.exceptions.RayError as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BenchError(f"shard {job.start}-{job.stop} failed on Ray after {MAX_RETRIES} retries ({first_line}); "
                             "finished shards are saved, run the same command again to resume") from None

    def run(self, jobs: list[ShardJob], progress: Progress) -> Iterator[ShardJob]:
        """Yield each job once its shard file is written, in completion order.

        The caller advances the bar by the shard's samples (Progress.shard_done); tqdm derives
        images/s and the ETA from those updates.
        """
        waiting = deque(jobs)
        running: dict[ray.ObjectRef, ShardJob] = {}
        limit = self.workers or len(jobs)
        try:
            while waiting or running:
                while waiting and len(running) < limit:
                    job = waiting.popleft()
                    running[self._submit(job)] = job
                (ready,), _ = ray.wait(list(running), num_returns=1)
                job = running.pop(ready)
                progress.bar.set_postfix_str(f"shards running: {len(running)}", refresh=False)
                write_npz_atomic(Path(job.path), **self._collect(ready, job))
                yield job
        finally:
            for ref in running:  # interrupted or failed: stop the shards nobody will collect
                ray.cancel(ref)

    def close(self) -> None:
        """Disconnect if this executor connected; a cluster it started stops with it."""
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()
            self._owns_connection = False


# ---- sweeps -------------------------------------------------------------------------------

@dataclass
class _Point:
    """One run of a sweep being drawn: its jobs and which are still missing."""

    resolved: ResolvedRun
    run_dir: Path
    jobs: list[ShardJob]
    missing: set[str] = field(default_factory=set)
    resumed: int = 0
    started: float = field(default_factory=time.time)


def _plan(resolved: ResolvedRun, store: Store, force: bool) -> _Point:
    """Jobs of one run, with shards saved by an earlier attempt counted as done."""
    _runtime(resolved.task.name)  # load models now: a corrupt checkpoint fails before any shard is drawn
    run_dir = artifacts_root(store) / resolved.run_id
    shard_dir = run_dir / "shards"
    if force and shard_dir.exists():
        for old in shard_dir.glob("*.npz"):
            old.unlink()
    jobs = shard_jobs(resolved, shard_dir)
    missing = {job.path for job in jobs if _load_shard(Path(job.path), job) is None}
    return _Point(resolved, run_dir, jobs, missing, resumed=len(jobs) - len(missing))


def _complete(point: _Point, store: Store, sampling_seconds: float) -> RunOutcome:
    """Evaluate and store a run whose shards are all on disk."""
    shards = [_load_shard(Path(job.path), job) for job in point.jobs]
    if any(s is None for s in shards):
        raise BenchError(f"a shard of run {point.resolved.run_id} was not written; run the command again to resume")
    return _finish(point.resolved, store, point.run_dir, shards, point.started, sampling_seconds, len(point.jobs), point.resumed)


def run_many(runs: list[ResolvedRun], store: Store, executor=None, *, force: bool = False, progress: bool = True) -> list[RunOutcome]:
    """Run sweep points together: all missing shards are submitted at once, each point is stored as its last shard lands."""
    outcomes: dict[str, RunOutcome] = {}
    points: dict[str, _Point] = {}
    for resolved in runs:
        if resolved.run_id in outcomes or resolved.run_id in points:
            continue  # a grid that names one point twice draws it once
        if not force and store.run_status(resolved.run_id) == "done":
            outcomes[resolved.run_id] = RunOutcome(resolved.run_id, stored_result(store, resolved.run_id), reused=True)
        else:
            points[resolved.run_id] = _plan(resolved, store, force)
    if points:
        outcomes.update(_draw_points(list(points.values()), store, executor or InProcessExecutor(), progress))
    return [outcomes[resolved.run_id] for resolved in runs]


def _draw_points(points: list[_Point], store: Store, executor, progress: bool) -> dict[str, RunOutcome]:
    owner = {job.path: point for point in points for job in point.jobs}
    todo = [job for point in points for job in point.jobs if job.path in point.missing]
    first = points[0].resolved
    label = f"{len(points)} runs of {first.method.name} on {first.task.name}" if len(points) > 1 else f"{first.method.name} on {first.task.name}"
    bar = Progress(sum(p.resolved.samples for p in points), first.steps, label, progress)
    bar.add_samples(sum(job.stop - job.start for p in points for job in p.jobs if job.path not in p.missing))
    outcomes: dict[str, RunOutcome] = {}
    sampling_started = time.time()
    try:
        for point in (p for p in points if not p.missing):
            outcomes[point.resolved.run_id] = _complete(point, store, 0.0)
        for job in executor.run(todo, bar):
            bar.shard_done(job, counted_steps=isinstance(executor, InProcessExecutor))
            point = owner[job.path]
            point.missing.discard(job.path)
            if not point.missing:  # the other points' shards keep running on Ray meanwhile
                outcomes[point.resolved.run_id] = _complete(point, store, time.time() - sampling_started)
    finally:
        bar.close()
    return outcomes
