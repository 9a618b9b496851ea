"""The user paths of `bench`: list, describe, run, re-run, leaderboard, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_json

from negguide.bench.cli import main as bench_main
from negguide.results.leaderboard import leaderboard_table
from negguide.results.store import Store

REPO = Path(__file__).resolve().parents[2]
QUICK = ["--task", "gmm1d-remove-1", "--samples", "256", "--steps", "50"]


def test_list_and_describe(capsys):
    assert bench_main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    for name in ("none", "np", "sld", "dng", "dng-exact", "cfg-remember"):
        assert name in out
    assert bench_main(["describe", "task", "gmm1d-remove-1", "--json"]) == 0
    task = json.loads(capsys.readouterr().out)
    assert task["removed"] == 1 and len(task["means"]) == len(task["stds"]) == len(task["weights"]) == 3
    assert task["schedule"] == {"T": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    assert bench_main(["describe", "method", "dng", "--json"]) == 0
    params = {p["name"]: p for p in json.loads(capsys.readouterr().out)["parameters"]}
    assert params["prior"] == {"name": "prior", "type": "float", "default": 0.25}
    assert params["variance"]["default"] == "beta_tilde"


def test_run_stores_once_and_saves_samples(db, capsys):
    first = run_json(capsys, "--method", "dng", *QUICK, "--param", "scale=2")
    assert {"run_id", "task", "method", "params", "samples", "seed", "metrics", "artifacts_dir"} <= set(first)
    assert first["params"]["scale"] == 2.0 and first["samples"] == 256
    saved = np.load(Path(first["artifacts_dir"]) / "samples.npz")["x"]
    assert saved.shape == (256, 1)
    again = run_json(capsys, "--method", "dng", *QUICK, "--param", "scale=2")
    assert again["reused"] and again["metrics"] == first["metrics"]
    forced = run_json(capsys, "--method", "dng", *QUICK, "--param", "scale=2", "--force")
    assert not forced["reused"] and forced["metrics"] == first["metrics"]
    store = Store(db)
    assert len(store.runs()) == 1
    assert len(store.metrics()) == len(first["metrics"])
    traces = store.traces(first["run_id"])
    assert {"guidance_scale", "posterior", "posterior_exact"} <= set(traces.name)


def test_batch_size_does_not_change_results(db, capsys):
    small = run_json(capsys, "--method", "sld", *QUICK, "--batch-size", "100")
    large = run_json(capsys, "--method", "sld", *QUICK, "--batch-size", "256", "--force")
    assert small["run_id"] == large["run_id"] and small["metrics"] == large["metrics"]
    assert small["shards_total"] == 3 and large["shards_total"] == 1


def test_leaderboard_ranks_safe_runs_by_quality(db, capsys):
    for method, scale in (("none", "1"), ("np", "1"), ("dng-exact", "1")):
        run_json(capsys, "--method", method, *QUICK, "--param", f"scale={scale}")
    assert bench_main(["leaderboard", "--task", "gmm1d-remove-1"]) == 0
    assert "none satisfies a protocol" in capsys.readouterr().out  # 256-sample runs are exploratory
    assert bench_main(["leaderboard", "--task", "gmm1d-remove-1", "--exploratory"]) == 0
    out = capsys.readouterr().out
    table = leaderboard_table(Store(db), "gmm1d-remove-1", exploratory=True)
    assert table.method.iloc[0] == "dng-exact" and table["rank"].iloc[0] == "1" and "dng-exact" in out
    assert table["protocol"].tolist() == ["exploratory"] * 3


def test_user_method_from_file(db, capsys):
    spec = f"{REPO / 'examples' / 'decaying_np.py'}:DecayingNP"
    result = run_json(capsys, "--method", spec, *QUICK, "--param", "power=2")
    assert result["method"] == "decaying-np" and result["params"]["power"] == 2.0


BAD_INPUTS = {
    "unknown method": (["--method", "dgn", *QUICK], "did you mean 'dng'"),
    "unknown task": (["--method", "dng", "--task", "gmm1d-remove-7"], "did you mean"),
    "unknown parameter": (["--method", "dng", *QUICK, "--param", "priorr=0.3"], "did you mean 'prior'"),
    "ill-typed parameter": (["--method", "dng", *QUICK, "--param", "prior=high"], "not a valid float"),
    "prior outside (0, 1)": (["--method", "dng", *QUICK, "--param", "prior=1.2"], "prior must be in (0, 1)"),
    "p_min >= p_max": (["--method", "dng", *QUICK, "--param", "p_min=0.5", "--param", "p_max=0.4"], "p_min < p_max"),
    "steps > T": (["--method", "dng", "--task", "gmm1d-remove-1", "--steps", "1001"], "--steps must be between 1 and T=1000"),
    "samples <= 0": (["--method", "dng", "--task", "gmm1d-remove-1", "--samples", "0"], "--samples must be a positive"),
    "missing method file": (["--method", "nowhere.py:Thing", *QUICK], "not found"),
    "exact-only method on a task without oracles": None,
    "unknown profile": (["--method", "dng", "--task", "gmm1d-remove-1", "--profile", "huge"], "has no protocol 'huge'"),
}


@pytest.mark.parametrize("case", [k for k, v in BAD_INPUTS.items() if v is not None])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, db, capsys):
    args, message = BAD_INPUTS[case]
    assert bench_main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not db.exists()


def test_unreadable_method_file(db, capsys, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def oops(:\n")
    assert bench_main(["run", "--method", f"{broken}:Oops", *QUICK]) == 2
    assert "could not load method file" in capsys.readouterr().err
    assert not db.exists()


def test_a_failed_run_leaves_no_rows(db, capsys):
    run_json(capsys, "--method", "none", *QUICK)
    assert bench_main(["run", "--method", "np", *QUICK, "--param", "scale=1e308", "--no-progress"]) == 2
    assert "produced NaN or inf at step" in capsys.readouterr().err
    store = Store(db)
    assert list(store.runs().method) == ["none"]
    assert set(store.metrics().run_id) == set(store.runs().run_id)
