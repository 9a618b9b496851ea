"""Shared fixtures: an isolated store per test and a fast way to draw exact-task samples."""
from __future__ import annotations

import json

import numpy as np
import pytest

from negguide.bench.cli import main as bench_main
from negguide.bench.run.shards import pick_device, runtime_for
from negguide.bench.sampler import sample
from negguide.bench.tasks import get_task
from negguide.methods import load_method


@pytest.fixture
def db(tmp_path, monkeypatch):
    """A fresh DuckDB path; BENCH_DB points at it so nothing touches the default store."""
    path = tmp_path / "store" / "bench.duckdb"
    monkeypatch.setenv("BENCH_DB", str(path))
    return path


def draw(task_name: str, method: str, params: dict, samples: int = 512, steps: int = 200, seed: int = 0, ids=None):
    """Final samples and traces of one method on an exact task (no store)."""
    task = get_task(task_name)
    runtime = runtime_for(task, pick_device(task))
    ids = np.arange(samples) if ids is None else ids
    return sample(load_method(method, params), runtime.condition(ids), task.schedule.steps(steps), seed, task.shape,
                  dtype=runtime.dtype, device=runtime.device)


def labels_of(task_name: str, x) -> np.ndarray:
    """The judge's class (or mode) of each sample."""
    task = get_task(task_name)
    return runtime_for(task, pick_device(task)).records(x, ())["label"]


def run_json(capsys, *args: str, baseline: bool = False) -> dict:
    """`bench run ... --json` in-process (without the unguided baseline unless asked); the parsed JSON object."""
    capsys.readouterr()
    code = bench_main(["run", *args, "--json", "--no-progress", *([] if baseline else ["--no-baseline"])])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


from dashboard_store import store_path  # noqa: E402,F401  (the dashboard tests' shared store, built once when asked for)
