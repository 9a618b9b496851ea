"""Shared fixtures: an isolated store per test and a fast way to draw exact-task samples."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench.cli import main as bench_main
from bench.sampler import sample
from bench.tasks import get_task
from methods import load_method


@pytest.fixture
def db(tmp_path, monkeypatch):
    """A fresh DuckDB path; BENCH_DB points at it so nothing touches the default store."""
    path = tmp_path / "store" / "bench.duckdb"
    monkeypatch.setenv("BENCH_DB", str(path))
    return path


def draw(task_name: str, method: str, params: dict, samples: int = 512, steps: int = 200, seed: int = 0, ids=None):
    """Final samples and traces of one method on an exact task (no store)."""
    task = get_task(task_name)
    runtime = task.load()
    ids = np.arange(samples) if ids is None else ids
    return sample(runtime.denoiser, load_method(method, params), task.schedule.steps(steps), ids, seed, task.shape,
                  dtype=runtime.dtype, exact_trace=runtime.exact_trace)


def run_json(capsys, *args: str) -> dict:
    """`bench run ... --json` in-process; the parsed JSON object."""
    capsys.readouterr()
    code = bench_main(["run", *args, "--json", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)
