"""MNIST sampling against the CPU's speed limit: bare forwards, the harness, the main command.

    python benchmarks/bench_mnist_speed.py [--task mnist-remove-0] [--protocol standard] [--repeats 3]

Side by side in one run, on the task's shipped model (default the latent model; `--task mnist-pixel-remove-0`
for the pixel DDPM) and the torch threads of `bench run`:
1. the cost of one forward per image at micro-batches of 16 to 256 rows, and each size's largest
   difference from one whole-batch forward (0 means bit-identical);
2. a bare loop of DNG's network calls (uncond and neg at the bundle's micro-batch) with the ancestral
   update and nothing else, against `bench run --method dng`'s sampling time (timings.sampling_s),
   and their ratio (target <= 1.10); each repeat runs both back to back, at the protocol's samples and steps
   (standard: 2,048 x 50, whose whole DNG run, judging included, must take <= 3 minutes on 2 quiet cores);
3. the main command, `bench run --method dng --task TASK` in a fresh store: its wall time and its DNG run's
   sampling and total time; it also draws unguided sampling and NP at the task's defaults beside it.
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
from negguide.bench.tasks import Task, get_task
from negguide.datasets.bundles import eps_prediction

SIZES = (16, 32, 64, 128, 256)


def forward_costs(unet: torch.nn.Module, null_label: int, shape: tuple[int, ...], rows: int = 256, repeats: int = 3) -> dict[int, tuple[float, float]]:
    """micro-batch -> (median ms per image per forward, largest difference from one whole-batch forward)."""
    x = noise.gaussian(0, np.arange(rows), noise.INITIAL, shape).float()
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


def bare_dng_loop(task: Task, unet: torch.nn.Module, null_label: int, micro_batch: int | None, samples: int, steps: int,
                  scale: float = 5.0) -> float:
    """Seconds for DNG's forwards and the ancestral update of `samples` x `steps`, nothing else around them."""
    ids = np.arange(samples)
    x = noise.gaussian(0, ids, noise.INITIAL, task.shape).float()
    uncond, neg = torch.full((samples,), null_label), torch.full((samples,), 0)
    start = time.perf_counter()
    with torch.no_grad():
        for step in task.schedule.steps(steps):
            eps_u = eps_prediction(unet, x, step.t, uncond, micro_batch)
            eps_n = eps_prediction(unet, x, step.t, neg, micro_batch)
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
    parser.add_argument("--task", default="mnist-remove-0")
    parser.add_argument("--protocol", default="standard", help="the samples and steps timed (quick | standard)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    task = get_task(args.task)
    protocol = task.protocol(args.protocol)
    samples, steps = protocol.samples, protocol.steps
    runtime = task.load(torch.device("cpu"))
    bundle = runtime.denoiser
    unet, null_label, micro_batch = bundle.model, bundle.null_label, bundle.plan.micro_batch
    parameters = sum(p.numel() for p in unet.parameters())
    print(f"task {task.name} v{task.version} ({parameters:,} parameters, samples of shape {task.shape}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("one forward, per image:")
    for size, (ms, diff) in forward_costs(unet, null_label, task.shape).items():
        print(f"  micro-batch {size:>3}: {ms:6.3f} ms/image   largest difference from one whole-batch forward {diff:.1e}")
    run_args = ["--method", "dng", "--task", task.name, "--protocol", args.protocol, "--no-baseline"]
    bare, harness, total = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            bare.append(bare_dng_loop(task, unet, null_label, micro_batch, samples, steps))
            _, result = bench_run(run_args, Path(scratch) / f"harness{repeat}")
            assert not result["reused"] and result["shards_resumed"] == 0, "the harness run must draw every sample"
            harness.append(result["timings"]["sampling_s"])
            total.append(result["timings"]["total_s"])
        main_wall, main_result = bench_run(["--method", "dng", "--task", task.name], Path(scratch) / "main")
    forwards = 2 * samples * steps
    print(f"DNG, {args.protocol} protocol: {samples} samples x {steps} steps ({forwards:,} image forwards), {args.repeats} repeats side by side:")
    print(f"  bare loop          median {statistics.median(bare):7.1f} s  ({1000 * statistics.median(bare) / forwards:.3f} ms per image forward)  all {[round(v, 1) for v in bare]}")
    print(f"  bench run sampling median {statistics.median(harness):7.1f} s  all {[round(v, 1) for v in harness]}")
    print(f"  bench run total    median {statistics.median(total):7.1f} s  (sampling, judging, storing; target <= 180 s)  all {[round(v, 1) for v in total]}")
    print(f"  ratio harness sampling / bare: {statistics.median(harness) / statistics.median(bare):.3f} (target <= 1.10)")
    print(f"main command `bench run --method dng --task {task.name}` (DNG beside unguided sampling and NP at the task's defaults, fresh store): "
          f"{main_wall:.1f} s wall, DNG sampling {main_result['timings']['sampling_s']:.1f} s, "
          f"total {main_result['timings']['total_s']:.1f} s inside the DNG run")


if __name__ == "__main__":
    main()
