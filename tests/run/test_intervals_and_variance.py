"""Honest intervals on exact tasks, and the sampler's noise variance against the reference update."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import draw, labels_of
from scipy.stats import norm

from negguide.bench import noise
from negguide.bench.tasks import get_task
from negguide.metrics.intervals import Statistic, bootstrap, paired_difference, wilson


def test_wilson_intervals_cover_the_true_forbidden_share():
    """Unguided sampling of gmm1d-remove-1 over 200 seeds: the Wilson interval covers the true share ~95% of the time.

    The true share is the probability that a draw of the mixture lands nearest mode 1 (the judge's
    argmax): 1/3 (Phi(3) - Phi(-3)) + 2/3 (Phi(9) - Phi(3)) = 1/3 to 1e-16.
    """
    truth = (1 / 3) * (norm.cdf(3) - norm.cdf(-3)) + (2 / 3) * (norm.cdf(9) - norm.cdf(3))
    covered = []
    for seed in range(200):
        x, _ = draw("gmm1d-remove-1", "none", {}, samples=400, steps=100, seed=seed)
        interval = Statistic.share("forbidden_rate", labels_of("gmm1d-remove-1", x) == 1).interval()
        covered.append(interval.low <= truth <= interval.high)
    assert 0.90 <= np.mean(covered) <= 0.99, np.mean(covered)  # Binomial(200, 0.95): 0.90 is 3.2 sd away


def test_intervals_are_the_libraries_and_reproducible():
    interval = wilson(3, 100)
    assert interval.method == "wilson" and interval.low < 0.03 < interval.high
    values = np.random.default_rng(1).normal(size=300)
    mean = lambda i: float(values[i].mean())  # noqa: E731
    first, again = bootstrap(mean, 300), bootstrap(mean, 300)
    assert first == again and first.low < values.mean() < first.high
    assert abs((first.high - first.low) - 2 * 1.96 * values.std() / np.sqrt(300)) < 0.03


def test_a_paired_difference_is_narrower_than_two_separate_intervals():
    rng = np.random.default_rng(2)
    shared = rng.normal(size=500)  # the common noise of two runs
    a, b = shared + 0.05 * rng.normal(size=500), shared + 0.1 + 0.05 * rng.normal(size=500)
    difference, interval = paired_difference(Statistic.mean("change_related", a), Statistic.mean("change_related", b))
    assert interval.low < difference < interval.high and interval.low > 0  # significant although the runs' intervals overlap
    assert (interval.high - interval.low) < 0.2 * (Statistic.mean("change_related", a).interval().high - Statistic.mean("change_related", a).interval().low)


def test_sampler_with_variance_beta_is_the_reference_update():
    """One NP trajectory at T = 1000 (no respacing) against the reference code's loop, transcribed:
    x <- (x - beta_t / sqrt(1 - abar_t) eps) / sqrt(1 - beta_t), plus sqrt(beta_t) z unless t = 0."""
    task = get_task("gmm1d-remove-1")
    ours, _ = draw("gmm1d-remove-1", "np", {"scale": 0.5}, samples=64, steps=1000, seed=3)
    ours_beta = draw_with_variance("beta")
    from negguide.bench.run.shards import pick_device, runtime_for

    runtime = runtime_for(task, pick_device(task))
    ids = np.arange(64)
    denoiser = runtime.condition(ids).denoiser
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1.0 - betas)
    x = noise.gaussian(3, ids, noise.INITIAL, (1,))
    for index, t in enumerate(reversed(range(1000))):
        step = task.schedule.steps(1000)[index]
        preds = denoiser(x, step, ("uncond", "neg"))
        eps = preds["uncond"] - 0.5 * (preds["neg"] - preds["uncond"])
        x = (x - betas[t] / np.sqrt(1.0 - abar[t]) * eps) / np.sqrt(1.0 - betas[t])
        if t != 0:
            x = x + np.sqrt(betas[t]) * noise.gaussian(3, ids, index, (1,))
    torch.testing.assert_close(ours_beta, x, rtol=0, atol=1e-9)
    assert not torch.allclose(ours, x, atol=1e-3)  # beta_tilde (the default) is a different sampler


def draw_with_variance(variance: str) -> torch.Tensor:
    from negguide.bench.run.shards import pick_device, runtime_for
    from negguide.bench.sampler import sample
    from negguide.bench.samplers import SamplerSpec
    from negguide.methods import load_method

    task = get_task("gmm1d-remove-1")
    runtime = runtime_for(task, pick_device(task))
    x, _ = sample(load_method("np", {"scale": 0.5}), runtime.condition(np.arange(64)), task.schedule.steps(1000), 3, task.shape,
                  dtype=runtime.dtype, sampler=SamplerSpec.of("ddpm", {"variance": variance}).build())
    return x


@pytest.mark.parametrize("variance, expected", [("beta_tilde", None), ("beta", "beta")])
def test_variance_enters_the_config_only_when_it_is_not_the_default(variance, expected):
    from negguide.bench.run import RunRequest, resolve

    resolved = resolve(RunRequest(task="gmm1d-remove-1", method="np", variance=variance))
    assert resolved.config.get("sampler_variance") == expected
    assert resolved.protocol == ("quick" if variance == "beta_tilde" else None)
