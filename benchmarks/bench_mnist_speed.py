"""MNIST sampling against the CPU's speed limit: bare forwards, the harness, the main command.

    python benchmarks/bench_mnist_speed.py [--samples 256] [--steps 50] [--repeats 3]

Side by side in one run, on the shipped model and the torch threads of `bench run`:
1. the cost of one forward per image at micro-batches of 16 to 256 rows, and each size's largest
   difference from one whole-batch forward (0 means bit-identical);
2. a bare loop of DNG's network calls (uncond and neg at the bundle's micro-batch) with the ancestral
   update and nothing else, against `bench run --method dng`'s sampling time (timings.sampling_s),
   and their ratio (target <= 1.10); each repeat runs both back to back;
3. the main command, `bench run --method dng --task mnist-remove-0` in a fresh store: its wall time and
   its DNG run's sampling time (target <= 90 s for 256 samples x 50 steps); it also draws the unguided
   baseline beside it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from negguide.bench import noise
from negguide.bench.tasks import get_task
from negguide.bench.tasks.mnist import ddpm_dir
from negguide.datasets.bundles import CPU_MICRO_BATCH, eps_prediction
from negguide.datasets.mnist_models import load_ddpm

SIZES = (16, 32, 64, 128, 256)


def forward_costs(unet: torch.nn.Module, null_label: int, rows: int = 256, repeats: int = 3) -> dict[int, tuple[float, float]]:
    """micro-batch -> (median ms per image per forward, largest difference from one whole-batch forward)."""
    x = noise.gaussian(0, np.arange(rows), noise.INITIAL, (1, 28, 28)).float()
    labels = torch.full((rows,), null_label)
    with torch.no_grad():
        whole = eps_prediction(unet, x, 500, labels)
        found = {}
        for size in SIZES:
            times, out = [], whole
            for _ in range(repeats):
                start = time.perf_counter()
                out = eps_prediction(unet, x, 500, labels, size)
                times.append(time.perf_counter() - start)
            found[size] = (1000 * statistics.median(times) / rows, float((out - whole).abs().max()))
    return found


def bare_dng_loop(unet: torch.nn.Module, null_label: int, samples: int, steps: int, scale: float = 5.0) -> float:
    """Seconds for DNG's forwards and the ancestral update of `samples` x `steps`, nothing else around them."""
    task = get_task("mnist-remove-0")
    ids = np.arange(samples)
    x = noise.gaussian(0, ids, noise.INITIAL, task.shape).float()
    uncond, neg = torch.full((samples,), null_label), torch.full((samples,), 0)
    start = time.perf_counter()
    with torch.no_grad():
        for step in task.schedule.steps(steps):
            eps_u = eps_prediction(unet, x, step.t, uncond, CPU_MICRO_BATCH)
            eps_n = eps_prediction(unet, x, step.t, neg, CPU_MICRO_BATCH)
            x_prev = step.mean(x, eps_u - scale * 0.25 * (eps_n - eps_u))  # a fixed guidance scale stands in for the posterior
            if step.t_prev >= 0:
                x_prev = x_prev + step.beta_tilde**0.5 * noise.gaussian(0, ids, step.index, task.shape).float()
            x = x_prev
    return time.perf_counter() - start


def bench_run(args: list[str], folder: Path) -> tuple[float, dict]:
    """Wall seconds and the --json result of one `bench run` in a child process, with a fresh store in `folder`
    (its artifacts live beside it: a shared folder would let later runs resume from earlier shard files)."""
    folder.mkdir(parents=True)
    db = folder / "bench.duckdb"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "negguide.bench.cli", "run", *args, "--db", str(db), "--json"],
                          capture_output=True, text=True, check=True)
    return time.perf_counter() - start, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    unet, config = load_ddpm(ddpm_dir())
    print(f"model {ddpm_dir()} ({config.param_count:,} parameters), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("one forward, per image:")
    for size, (ms, diff) in forward_costs(unet, config.null_label).items():
        print(f"  micro-batch {size:>3}: {ms:6.2f} ms/image   largest difference from one whole-batch forward {diff:.1e}")
    run_args = ["--method", "dng", "--task", "mnist-remove-0", "--samples", str(args.samples), "--steps", str(args.steps), "--no-baseline"]
    bare, harness = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            bare.append(bare_dng_loop(unet, config.null_label, args.samples, args.steps))
            _, result = bench_run(run_args, Path(scratch) / f"harness{repeat}")
            assert not result["reused"] and result["shards_resumed"] == 0, "the harness run must draw every sample"
            harness.append(result["timings"]["sampling_s"])
        main_wall, main_result = bench_run(["--method", "dng", "--task", "mnist-remove-0"], Path(scratch) / "main")
    forwards = 2 * args.samples * args.steps
    print(f"DNG, {args.samples} samples x {args.steps} steps ({forwards:,} image forwards), {args.repeats} repeats side by side:")
    print(f"  bare loop          median {statistics.median(bare):7.1f} s  ({1000 * statistics.median(bare) / forwards:.2f} ms per image forward)  all {[round(v, 1) for v in bare]}")
    print(f"  bench run sampling median {statistics.median(harness):7.1f} s  all {[round(v, 1) for v in harness]}")
    print(f"  ratio harness / bare: {statistics.median(harness) / statistics.median(bare):.3f} (target <= 1.10)")
    print(f"main command `bench run --method dng --task mnist-remove-0` (DNG + unguided baseline, fresh store): "
          f"{main_wall:.1f} s wall, DNG sampling {main_result['timings']['sampling_s']:.1f} s (target <= 90 s), "
          f"total {main_result['timings']['total_s']:.1f} s inside the DNG run")


if __name__ == "__main__":
    main()
