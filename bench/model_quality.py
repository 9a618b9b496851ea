"""Quality of the shipped MNIST DDPM, unguided: class balance and Fréchet distances.

    python -m bench.model_quality --samples 1000 --steps 50 [--inception] --out docs/mnist-model

Writes quality.json and an unguided sample grid; every figure in the README comes from here.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.artifacts import image_grid_png
from bench.sampler import sample
from bench.task_mnist import MnistRuntime, _features, reference_stats
from bench.tasks import get_task
from metrics.classes import class_histogram
from metrics.frechet import FeatureStats, frechet_between
from methods import load_method


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
    runtime = MnistRuntime(removed=0)
    chain = task.schedule.steps(args.steps)
    started = time.time()
    parts = [sample(runtime.denoiser, load_method("none"), chain, np.arange(a, min(a + args.batch_size, args.samples)), args.seed, task.shape)[0]
             for a in range(0, args.samples, args.batch_size)]
    x = np.concatenate([p.numpy() for p in parts])
    sampling_s = time.time() - started
    import torch

    xt = torch.from_numpy(x)
    labels = runtime.class_labels(xt)
    images = runtime.to_artifact(xt)
    report = {
        "samples": args.samples, "steps": args.steps, "seed": args.seed, "sampling_s": round(sampling_s, 1),
        "class_histogram": class_histogram(labels, 10).tolist(),
        "kl_to_uniform": kl_to_uniform(labels),
        "fid_classifier_all": frechet_between(FeatureStats.of(_features(runtime.classifier, xt)), reference_stats(None)),
    }
    if args.inception:
        from datasets.mnist import load_mnist
        from metrics.fid import inception_fid

        real, _ = load_mnist()
        report["fid_inception_all"] = inception_fid(images, real[:, None])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "unguided_grid.png").write_bytes(image_grid_png(images, columns=16, limit=160))
    (args.out / "quality.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
