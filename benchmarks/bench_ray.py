"""One job in-process vs on a local Ray cluster, and Ray's fixed start-up cost.

    python benchmarks/bench_ray.py [--task gmm1d-remove-1] [--samples 4096] [--steps 500]
                                   [--batch-size 512] [--workers 2] [--repeats 3]

One untimed in-process run first loads the task's models in this process. Each repeat then uses
a fresh temporary database and --force, and runs, back to back: the job in-process (warm); a
fresh local Ray cluster (ray.init to the first trivial task: the start-up cost); the same job on
that cluster (its workers start cold, as for a user's `bench run --workers N`); the job again on
the same cluster (warm workers: the steady state of a sweep's later points).
MNIST works too (`--task mnist-remove-0 --samples 512 --steps 50 --batch-size 128`) when
datasets/weights/mnist-ddpm holds the trained model. On a machine busy with other work the
numbers move a lot between repeats: compare only figures printed by one run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray

from negguide.bench.run import ResolvedRun, RunRequest, resolve, run_one
from negguide.bench.run.ray import RayExecutor
from negguide.methods.errors import BenchError
from negguide.results.store import Store


@ray.remote
def _noop() -> int:
    return 0


def _job(resolved: ResolvedRun, executor) -> tuple[float, float]:
    """(wall seconds, sampling seconds) of one forced run into a fresh database."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = run_one(resolved, Store(Path(folder) / "bench.duckdb"), executor, force=True, progress=False).result
        return time.perf_counter() - started, result["timings"]["sampling_s"]


def _repeat(resolved: ResolvedRun, workers: int) -> dict[str, float]:
    local_wall, local_sampling = _job(resolved, None)
    started = time.perf_counter()
    executor = RayExecutor(workers=workers, address=None)
    ray.get(_noop.remote())
    startup = time.perf_counter() - started
    try:
        ray_wall, ray_sampling = _job(resolved, executor)
        warm_wall, warm_sampling = _job(resolved, executor)
    finally:
        executor.close()
    return {"in-process job": local_wall, "in-process sampling": local_sampling, "ray start-up": startup,
            "ray job": ray_wall, "ray sampling": ray_sampling, "ray job, warm": warm_wall, "ray sampling, warm": warm_sampling}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="gmm1d-remove-1")
    parser.add_argument("--method", default="dng")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        resolved = resolve(RunRequest(task=args.task, method=args.method, samples=args.samples, steps=args.steps, batch_size=args.batch_size))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if ray.is_initialized():
        ray.shutdown()
    _job(resolved, None)  # untimed: models and reference statistics load once in this process, not in repeat 1
    rows = [_repeat(resolved, args.workers) for _ in range(args.repeats)]
    medians = {name: statistics.median(row[name] for row in rows) for name in rows[0]}
    print(f"{args.method} on {args.task}: {args.samples} samples x {args.steps} steps, {len(resolved.shards())} shards of "
          f"<= {resolved.batch_size}; {args.workers} Ray workers; medians of {args.repeats} repeats")
    for name, value in medians.items():
        print(f"  {name:<22} {value:8.2f} s   (all: {', '.join(f'{row[name]:.2f}' for row in rows)})")
    print(f"  speed-up, sampling       {medians['in-process sampling'] / medians['ray sampling']:8.2f} x   (in-process / ray, cold workers)")
    print(f"  speed-up, sampling warm  {medians['in-process sampling'] / medians['ray sampling, warm']:8.2f} x")
    print(f"  speed-up, job            {medians['in-process job'] / medians['ray job']:8.2f} x")
    print(f"  speed-up, job warm       {medians['in-process job'] / medians['ray job, warm']:8.2f} x")
    print(f"  speed-up, with start-up  {medians['in-process job'] / (medians['ray job'] + medians['ray start-up']):8.2f} x"
          "   (in-process / (ray start-up + ray job))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
