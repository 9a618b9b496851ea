"""Each metric is registered once, with its direction, description and computation (metrics/base.py), and the
tasks compute their metrics through the registry, never by building a Statistic of their own."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from negguide.datasets.gmm import GMM1D
from negguide.metrics.base import METRICS, statistic
from negguide.metrics.classes import kl_classes
from negguide.metrics.distances import wasserstein_to_mixture
from negguide.metrics.frechet import FeatureStats, frechet_between
from negguide.metrics.intervals import DISTANCE, EITHER, PERCENTILE

TASKS = Path(__file__).resolve().parents[2] / "bench" / "tasks"
RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 10, 300)
FEATURES = RNG.normal(size=(300, 4))
REFERENCE = FeatureStats.of(RNG.normal(0.2, 1.1, size=(500, 4)))
POINTS = RNG.normal(size=(300, 1))


def test_every_metric_has_a_direction_a_description_and_a_computation():
    for name, info in METRICS.items():
        assert info.name == name and isinstance(info.higher_is_better, bool) and len(info.description) > 20
        assert callable(info.compute) and info.computation and "\n" not in info.computation


@pytest.mark.parametrize("name, records, expected, method", [
    ("forbidden_rate", {"hits": LABELS == 3}, float(np.mean(LABELS == 3)), "wilson"),
    ("kl_classes", {"labels": LABELS, "removed": 3, "classes": 10}, kl_classes(LABELS, 3, 10), DISTANCE),
    ("fid_classifier", {"features": FEATURES, "reference": REFERENCE}, frechet_between(FeatureStats.of(FEATURES), REFERENCE), DISTANCE),
    ("wasserstein", {"points": POINTS, "target": GMM1D}, wasserstein_to_mixture(POINTS, GMM1D), EITHER),
    ("q", {"first": np.full(300, 0.8), "second": np.full(300, 0.5)}, 0.3, PERCENTILE),
    ("posterior_mae", {"tracked": np.full((5, 300), 0.25), "exact": np.zeros((5, 300))}, 0.25, PERCENTILE),
])
def test_a_registered_computation_gives_the_metric_and_its_interval(name, records, expected, method):
    found = statistic(name, **records)
    assert found.name == name
    assert found.value() == pytest.approx(expected, rel=1e-12)
    interval = found.interval()
    assert method in interval.method and interval.low <= found.value() <= interval.high


def test_tasks_build_no_statistic_of_their_own():
    """A metric computed inside a task, outside the registry, would be a second definition of it."""
    built_here = {path.name: re.findall(r"Statistic(?:\.\w+)?\(", path.read_text()) for path in TASKS.glob("*.py")}
    assert not {name: found for name, found in built_here.items() if found}
