"""Cost of Inception FID on this machine: weights, feature extraction (images/s), cached reference.

    python benchmarks/bench_fid.py [--images 16] [--batch 16] [--repeats 3] [--reference 32] [--frechet]

Runs in a fresh cache dir (or --cache DIR), so the first weight conversion and the uncached
reference are really cold. Images are real MNIST digits (the extractor resizes them to 299x299,
so the cost does not depend on the input size). --frechet also times one 2048-dim Fréchet distance.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch


def timed(fn) -> tuple[float, object]:
    """Wall seconds taken by fn() and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def cpu_timed(fn) -> tuple[float, float]:
    """(wall, this process's CPU) seconds taken by fn(): on a shared machine the two differ."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="images per timed feature extraction")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", type=int, default=32, help="images in the cached/uncached reference")
    parser.add_argument("--cache", default=None, help="cache dir (default: a fresh temporary one)")
    parser.add_argument("--frechet", action="store_true", help="also time one 2048-dim Fréchet distance")
    args = parser.parse_args()
    os.environ["BENCH_CACHE"] = args.cache or tempfile.mkdtemp(prefix="bench-fid-")

    from negguide.datasets.mnist import load_mnist
    from negguide.metrics import fid
    from negguide.metrics.frechet import frechet_between

    images, labels = load_mnist()
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
          f"cache {os.environ['BENCH_CACHE']}")

    cold, path = timed(fid.weights_path)
    warm, _ = timed(fid.weights_path)
    print(f"weights {path.name}: first call {cold:.1f} s, cached {warm * 1e3:.1f} ms")

    sample = images[:args.images, None]
    fid.inception_features(sample[:1])  # warm-up: extractor construction and first-call overheads
    runs = [cpu_timed(lambda: fid.inception_features(sample, batch=args.batch)) for _ in range(args.repeats)]
    rate = args.images / statistics.median(w for w, _ in runs)
    cpu_per_image = statistics.median(c for _, c in runs) / args.images
    print(f"features: {rate:.2f} images/s wall (median of {args.repeats} x {args.images} images, batch {args.batch}; "
          f"runs {', '.join(f'{w:.1f}' for w, _ in runs)} s), {cpu_per_image:.2f} CPU-s per image")
    print(f"  -> a 4,500-image MNIST reference would take about {4500 / rate / 60:.1f} min uncached")

    reference = images[labels != 0][:args.reference, None]
    uncached, stats = timed(lambda: fid.reference_stats(reference, batch=args.batch))
    cached, _ = timed(lambda: fid.reference_stats(reference, batch=args.batch))
    print(f"reference of {args.reference} images: uncached {uncached:.1f} s, cached {cached * 1e3:.1f} ms "
          f"({fid.reference_stats_path(reference).stat().st_size / 2**20:.0f} MiB .npz)")

    if args.frechet:
        generated = fid.features_stats(images[labels == 0][:args.reference, None], batch=args.batch)
        seconds, value = timed(lambda: frechet_between(generated, stats))
        print(f"one Fréchet distance at 2048 dims: {seconds:.1f} s (FID {value:.2f} on {args.reference} vs "
              f"{args.reference} images: biased at this size)")


if __name__ == "__main__":
    main()
