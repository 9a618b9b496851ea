"""Shards on Ray: a local cluster (`--workers N`) or an existing one (`--ray-address`).

Each shard is one Ray task. The worker draws the samples (on the GPU Ray gives it, when the cluster
has GPUs) and returns the arrays; the engine, in the driver, writes the shard file (atomically) as
each result arrives, then the DuckDB row once a run is complete.
Why the driver writes: it works unchanged on several machines without a shared folder, a worker
that dies mid-shard leaves nothing half-written, and every file under the artifacts folder has one
writer. The cost is that shard arrays travel through Ray's object store (about 1 MB per MNIST shard).
"""
from __future__ import annotations

import logging
import os
import socket
from collections import deque
from typing import Iterator

import numpy as np
import ray
import torch

from negguide.bench.run.executors import Progress
from negguide.bench.run.plan import ShardJob
from negguide.bench.run.shards import draw_shard, pick_device
from negguide.methods.errors import BenchError

OBJECT_STORE_BYTES = 80 * 1024**2  # shards are small; Ray's default (30% of RAM) is far too much here
CONNECT_TIMEOUT_S = 3.0
MAX_RETRIES = 3  # a shard whose worker process dies is re-run this many times
CPUS_PER_SHARD = 1


def _shard_task(job: ShardJob, threads: int) -> dict[str, np.ndarray]:
    """Runs in a Ray worker: one shard with as many torch threads as CPUs the task asked for, on the
    GPU Ray assigned to it (Ray sets CUDA_VISIBLE_DEVICES per task), else on the CPU."""
    torch.set_num_threads(threads)  # a Ray worker process runs shards only: its thread count is ours to set
    return draw_shard(job, pick_device(job.task))


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
        on_gpu = self.uses_gpus and job.task.default_device != "cpu"  # exact tasks stay on the CPU: reserve no GPU for them
        resources = {"num_gpus": 1, "num_cpus": CPUS_PER_SHARD} if on_gpu else {"num_cpus": CPUS_PER_SHARD}
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

    def run(self, jobs: list[ShardJob], progress: Progress) -> Iterator[tuple[ShardJob, dict[str, np.ndarray]]]:
        """Yield each job with its arrays in completion order; progress counts whole shards."""
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
                arrays = self._collect(ready, job)
                progress(job.size * job.steps)
                yield job, arrays
        finally:
            for ref in running:  # interrupted or failed: stop the shards nobody will collect
                ray.cancel(ref)

    def close(self) -> None:
        """Disconnect if this executor connected; a cluster it started stops with it."""
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()
            self._owns_connection = False
