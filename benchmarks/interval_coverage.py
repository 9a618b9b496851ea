"""Coverage of interval methods for Fréchet and Wasserstein distances and the class-histogram KL, on exact cases with a known truth.

    python benchmarks/interval_coverage.py [--reps 100] [--resamples 200] [--methods percentile,basic,half-sampling,BCa]

Fréchet: features drawn from N(mu1, C1), the reference is the exact N(0, C2) (as a FeatureStats whose
mean and covariance are the population ones), so the true distance is the closed form
||mu1||^2 + Tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2). Wasserstein: samples from N(delta, 1) against the exact
N(0, 1) (W1 = |delta|), and in 2D from N((delta, 0), I) against N(0, I) (sliced W1 over the project's 64
directions = |delta| mean |cos angle|). Class-histogram KL: labels drawn from known class shares, against uniform
over the kept classes (truth: the population KL). Each rep draws a fresh sample (seed = rep) and computes every method's
interval on it. Columns: the truth, medians over reps of the estimate and of the interval's ends, how many
intervals covered the truth with a Wilson 95% interval on that share, the share of intervals that contain
their own estimate, and the coverage after widening each interval to its estimate ("hull").
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits

from negguide.datasets.gmm import GaussianMixture
from negguide.metrics.classes import kl_classes
from negguide.metrics.distances import SLICES, wasserstein_to_mixture
from negguide.metrics.frechet import FeatureStats, frechet_between, frechet_distance
from negguide.metrics.intervals import DISTANCE, EITHER, Interval, bootstrap, half_sampling, resampled


@dataclass(frozen=True)
class Case:
    """An exact case: a sampler of n points (seeded), the statistic of a point set, and the true value."""

    name: str
    dim: int
    draw: Callable[[int, int], np.ndarray]
    statistic: Callable[[np.ndarray], float]
    truth: float


def frechet_case(name: str, dim: int, shift: float, spread: float) -> Case:
    """Generated N(shift e_1, diag(lam (1 + spread cos k))) against the exact reference N(0, diag(lam)), lam_k = 1 / (1 + k/4)."""
    lam = 1.0 / (1.0 + np.arange(dim) / 4)
    mean = np.zeros(dim)
    mean[0] = shift
    cov = np.diag(lam * (1 + spread * np.cos(np.arange(dim))))
    count = 10**6  # any count: mean and covariance below are the population ones exactly
    reference = FeatureStats(count, np.zeros(dim), (count - 1) * np.diag(lam))
    root = np.linalg.cholesky(cov)

    def draw(n: int, seed: int) -> np.ndarray:
        return mean + np.random.default_rng(seed).standard_normal((n, dim)) @ root.T

    return Case(name, dim, draw, lambda x: frechet_between(FeatureStats.of(x), reference),
                frechet_distance(mean, cov, np.zeros(dim), np.diag(lam)))


def wasserstein_case(name: str, dim: int, delta: float) -> Case:
    """N(delta e_1, I) against the exact N(0, I) in 1D (W1 = delta) or 2D (sliced W1 = delta mean |cos|)."""
    target = GaussianMixture((tuple([0.0] * dim),), (1.0,), (1.0,))
    shift = np.zeros(dim)
    shift[0] = delta
    truth = delta if dim == 1 else delta * float(np.mean(np.abs(np.cos(np.pi * np.arange(SLICES) / SLICES))))

    def draw(n: int, seed: int) -> np.ndarray:
        return shift + np.random.default_rng(seed).standard_normal((n, dim))

    return Case(name, dim, draw, lambda x: wasserstein_to_mixture(x, target), truth)


def kl_case(name: str, shares: tuple[float, ...], removed: int | None) -> Case:
    """Labels drawn from the class shares; kl_classes (smoothed, +0.5) against uniform over the kept classes, whose
    population value is KL(uniform || shares of the kept classes) (the smoothing vanishes as n grows)."""
    shares_array = np.asarray(shares) / np.sum(shares)
    kept = [c for c in range(len(shares)) if c != removed]
    target = np.full(len(kept), 1.0 / len(kept))

    def draw(n: int, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).choice(len(shares), size=(n, 1), p=shares_array)

    return Case(name, 1, draw, lambda x: kl_classes(x[:, 0], removed, len(shares)),
                float(np.sum(target * (np.log(target) - np.log(shares_array[kept])))))


def interval(method: str, of: Callable[[np.ndarray], float], n: int, resamples: int) -> Interval:
    """A candidate (percentile, basic, BCa, half-sampling) or one of the project's methods (basic-hull, percentile-or-basic)."""
    if method == "half-sampling":
        return half_sampling(of, n, resamples)
    if method in (DISTANCE, EITHER):
        return resampled(of, n, resamples, method)
    return bootstrap(of, n, resamples, method=method)


@dataclass(frozen=True)
class Row:
    case: str
    method: str
    n: int
    dim: int
    truth: float
    estimates: np.ndarray
    lows: np.ndarray
    highs: np.ndarray
    seconds: float

    def line(self) -> str:
        reps = len(self.estimates)
        covered = int(np.sum((self.lows <= self.truth) & (self.truth <= self.highs)))
        ci = stats.binomtest(covered, reps).proportion_ci(method="wilson")
        contains = np.mean((self.lows <= self.estimates) & (self.estimates <= self.highs))
        hull = np.mean((np.minimum(self.lows, self.estimates) <= self.truth) & (self.truth <= np.maximum(self.highs, self.estimates)))
        return (f"| {self.case} | {self.method} | {self.n} | {self.dim} | {self.truth:.4g} | {np.median(self.estimates):.4g} | "
                f"[{np.median(self.lows):.4g}, {np.median(self.highs):.4g}] | {covered}/{reps} | {covered / reps:.2f} [{ci.low:.2f}, {ci.high:.2f}] | "
                f"{contains:.2f} | {hull:.2f} | {self.seconds / reps:.3g} |")


HEADER = ("| case | method | n | d | truth | median estimate | median interval | covered | coverage [95% CI] | contains estimate | "
          "coverage of hull | s/interval |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def measure(case: Case, n: int, method: str, reps: int, resamples: int) -> Row:
    estimates, lows, highs = [], [], []
    start = time.perf_counter()
    for rep in range(reps):
        x = case.draw(n, rep)
        found = interval(method, lambda i: case.statistic(x[i]), n, resamples)
        estimates.append(case.statistic(x))
        lows.append(found.low)
        highs.append(found.high)
    return Row(case.name, method, n, case.dim, case.truth, np.array(estimates), np.array(lows), np.array(highs), time.perf_counter() - start)


def plan() -> list[tuple[Case, int, int]]:
    """(case, n, reps divisor): the project's sizes (256 quick, 2,048 standard; MNIST classifier features are 128-d)."""
    cases = []
    for dim in (16, 64):
        for label, shift, spread in (("near", 0.5, 0.3), ("far", 2.0, 0.5)):
            for n in (256, 2048):
                cases.append((frechet_case(f"frechet-{label}", dim, shift, spread), n, 1))
    cases.append((frechet_case("frechet-far", 128, 2.0, 0.5), 256, 1))
    for delta in (0.0, 0.1, 1.0):
        for n in (256, 2048):
            cases.append((wasserstein_case(f"w1-{delta}", 1, delta), n, 1))
    cases.append((wasserstein_case("sliced-w1-0.5", 2, 0.5), 256, 4))  # 64 slices per evaluation: fewer reps
    # Class-histogram KL: real digits (every class, uniform: truth 0), a guided run (0.5% forbidden, kept uniform),
    # and a skewed guided run (kept shares 0.07-0.15)
    skewed = (0.005, 0.07, 0.08, 0.09, 0.10, 0.11, 0.12, 0.13, 0.145, 0.15)
    for case in (kl_case("kl-uniform-all", (0.1,) * 10, None), kl_case("kl-guided-0.5%", (0.005,) + (0.995 / 9,) * 9, 0),
                 kl_case("kl-guided-skewed", skewed, 0)):
        for n in (1000, 2048):
            cases.append((case, n, 1))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--methods", default=f"percentile,basic,half-sampling,BCa,{EITHER}")
    parser.add_argument("--bca-max-n", type=int, default=256, help="BCa's jackknife costs n evaluations per interval: skip it above this n")
    parser.add_argument("--only", default="", help="run only cases whose name starts with this (frechet, w1-, sliced, kl)")
    args = parser.parse_args()
    print(HEADER, flush=True)
    with threadpool_limits(1):  # small matrices: BLAS threads only contend (60 ms vs 1 ms per 64-d distance on 2 busy cores)
        run(args)


def run(args: argparse.Namespace) -> None:
    for case, n, divisor in plan():
        if not case.name.startswith(args.only):
            continue
        for method in args.methods.split(","):
            if method == "BCa" and n > args.bca_max_n:
                continue
            print(measure(case, n, method, max(10, args.reps // divisor), args.resamples).line(), flush=True)


if __name__ == "__main__":
    main()
