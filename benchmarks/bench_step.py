"""Per-step cost of the harness: DNG vs NP, and the harness vs a bare loop of the same network calls.

    python benchmarks/bench_step.py [--batch 64] [--steps 20] [--repeats 5]

Uses the MNIST UNet architecture (random weights: the cost does not depend on them). Each
repeat runs the three variants back to back, so the medians and ratios are side by side.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from negguide.bench import noise
from negguide.bench.sampler import sample
from negguide.bench.tasks import Conditioning
from negguide.datasets.bundles import ConditionalBundle
from negguide.datasets.mnist_models import NULL_LABEL, DDPMConfig, build_unet
from negguide.methods import load_method
from negguide.methods.schedule import Schedule


@torch.no_grad()
def bare_loop(unet: torch.nn.Module, chain, batch: int, seed: int, scale: float) -> torch.Tensor:
    """The same network calls and update with nothing around them (NP guidance)."""
    ids = np.arange(batch)
    x = noise.gaussian(seed, ids, noise.INITIAL, (1, 28, 28)).float()
    labels = torch.cat([torch.full((batch,), NULL_LABEL), torch.full((batch,), 0)])
    for step in chain:
        t = torch.full((2 * batch,), step.t, dtype=torch.long)
        eps_u, eps_n = unet(torch.cat([x, x]), t, class_labels=labels).sample.split(batch)
        eps = eps_u - scale * (eps_n - eps_u)
        x_prev = (x - step.beta / (1 - step.alpha_bar) ** 0.5 * eps) / step.alpha**0.5
        if step.beta_tilde > 0:
            x_prev = x_prev + step.beta_tilde**0.5 * noise.gaussian(seed, ids, step.index, (1, 28, 28)).float()
        x = x_prev
    return x


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    unet = build_unet(DDPMConfig()).eval()
    chain = Schedule().steps(args.steps)
    conditioning = Conditioning(ConditionalBundle(unet, NULL_LABEL, removed=0), np.arange(args.batch))
    variants = {
        "bare loop (NP)": lambda: bare_loop(unet, chain, args.batch, 0, 0.5),
        "harness NP": lambda: sample(load_method("np", {"scale": 0.5}), conditioning, chain, 0, (1, 28, 28)),
        "harness DNG": lambda: sample(load_method("dng", {"scale": 5.0}), conditioning, chain, 0, (1, 28, 28)),
    }
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn) / args.steps)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"batch {args.batch}, {args.steps} steps, {args.repeats} repeats, torch threads {torch.get_num_threads()}")
    for name, value in medians.items():
        print(f"  {name:<16} median {value * 1000:8.1f} ms/step  (min {min(times[name]) * 1000:.1f}, max {max(times[name]) * 1000:.1f})")
    print(f"  DNG / NP (harness)     {medians['harness DNG'] / medians['harness NP']:.3f}")
    print(f"  harness NP / bare loop {medians['harness NP'] / medians['bare loop (NP)']:.3f}")


if __name__ == "__main__":
    main()
