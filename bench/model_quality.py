"""Quality of the shipped MNIST DDPM, unguided: class balance and Fréchet distances.

    python -m negguide.bench.model_quality --samples 1000 --steps 50 [--inception] --out docs/mnist-model

Writes quality.json and an unguided sample grid; every figure in the README comes from here.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from negguide.bench.run.shards import pick_device, runtime_for
from negguide.bench.sampler import sample
from negguide.bench.tasks import get_task
from negguide.bench.tasks.mnist import reference_stats
from negguide.methods import load_method
from negguide.metrics.classes import class_histogram
from negguide.metrics.frechet import FeatureStats, frechet_between
from negguide.results.artifacts import image_grid_png


def kl_to_uniform(labels: np.ndarray, n_classes: int = 10) -> float:
    """KL(uniform || generated histogram), counts smoothed by +0.5 as in kl_classes."""
    counts = class_histogram(labels, n_classes) + 0.5
    generated = counts / counts.sum()
    return float(np.sum((1.0 / n_classes) * (np.log(1.0 / n_classes) - np.log(generated))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inception", action="store_true", help="also Inception FID against all 5,000 digits (slow on CPU)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    task = get_task("mnist-remove-0")
    device = pick_device(task)
    runtime = runtime_for(task, device)
    chain = task.schedule.steps(args.steps)
    started = time.time()
    with torch.inference_mode():
        parts = [sample(load_method("none"), runtime.condition(np.arange(a, min(a + args.batch_size, args.samples))), chain, args.seed,
                        task.shape, device=device)[0].cpu() for a in range(0, args.samples, args.batch_size)]
    xt = torch.cat(parts)
    sampling_s = time.time() - started
    records = runtime.judge(xt, {}, ()).records
    labels, images = records["label"], runtime.to_artifact(xt)
    report = {
        "samples": args.samples, "steps": args.steps, "seed": args.seed, "sampling_s": round(sampling_s, 1), "device": str(device),
        "class_histogram": class_histogram(labels, 10).tolist(),
        "kl_to_uniform": kl_to_uniform(labels),
        "confident_share": float(np.mean(records["confidence"] > 0.9)),
        "fid_classifier_all": frechet_between(FeatureStats.of(records["features"]), reference_stats(None)),
    }
    if args.inception:
        from negguide.datasets.mnist import load_mnist
        from negguide.metrics.fid import inception_fid

        real, _ = load_mnist()
        report["fid_inception_all"] = inception_fid(images, real[:, None])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "unguided_grid.png").write_bytes(image_grid_png(images, columns=16, limit=160))
    (args.out / "quality.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
