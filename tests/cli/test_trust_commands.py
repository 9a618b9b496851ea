"""calibrate, compare, the run beside its unguided baseline, and the leaderboard's shared ranks."""
from __future__ import annotations

import json

import pandas as pd

from negguide.bench.cli import main as bench_main
from negguide.results.leaderboard import matched_safety_table, rank_groups
from negguide.results.store import Store

SMALL = ["--task", "gmm1d-remove-1", "--samples", "512", "--steps", "100", "--no-progress"]


def cli_json(capsys, *args: str):
    capsys.readouterr()
    code = bench_main([*args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_calibrate_finds_the_smallest_scale_and_reuses_its_runs(db, capsys):
    found = cli_json(capsys, "calibrate", "--method", "np", *SMALL, "--target", "0.05")
    chosen, points = found["chosen"], found["points"]
    assert chosen["interval"][1] <= 0.05 and found["monotone"] and found["rule"] == "upper95"
    below = [p for p in points if p["scale"] < chosen["scale"]]
    assert below and all(p["interval"][1] > 0.05 for p in below)  # nothing smaller is safe at the target
    assert max(p["scale"] for p in below) >= 0.95 * chosen["scale"]  # bisected to the 5% tolerance
    again = cli_json(capsys, "calibrate", "--method", "np", *SMALL, "--target", "0.05")
    assert again["chosen"] == {**chosen, "reused": True} and all(p["reused"] for p in again["points"])
    table = matched_safety_table(Store(db), "gmm1d-remove-1", 0.05)
    assert table.run_id.tolist() == [chosen["run_id"]] and table["rank"].tolist() == ["1"]


UNSTABLE = """
from negguide.methods import GuidanceMethod


class UnstableNP(GuidanceMethod):
    name = "unstable-np"

    def guide(self, step, preds, state):
        eps_u, eps_n = preds["uncond"], preds["neg"]
        if self.params.scale > 1.5:  # diverges above this scale
            return eps_u * float("nan"), state
        return eps_u - self.params.scale * (eps_n - eps_u), state
"""


def test_calibrate_stops_where_a_method_diverges_and_keeps_its_points(db, capsys, tmp_path):
    method = tmp_path / "unstable.py"
    method.write_text(UNSTABLE)
    found = cli_json(capsys, "calibrate", "--method", f"{method}:UnstableNP", *SMALL, "--target", "0.01")
    assert [p["scale"] for p in found["points"]] == [1.0] and found["chosen"] is None  # scale 1 misses; doubling to 2 diverged
    assert list(found["failed"]) == ["2"] and "produced NaN or inf at step 0" in found["failed"]["2"]
    assert Store(db).runs()["run_id"].tolist() == [found["points"][0]["run_id"]]  # nothing stored for the failed run


def test_calibrate_refuses_a_fixed_scale_and_bad_targets(db, capsys):
    for extra, message in ((["--param", "scale=2"], "calibrate chooses the scale"), (["--target", "1.5"], "--target must be a share")):
        assert bench_main(["calibrate", "--method", "np", *SMALL, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not db.exists()


def test_compare_pairs_two_runs_on_the_same_noise(db, capsys):
    a = cli_json(capsys, "run", "--method", "none", *SMALL, "--no-baseline")
    b = cli_json(capsys, "run", "--method", "dng", *SMALL, "--no-baseline")
    result = cli_json(capsys, "compare", a["run_id"], b["run_id"])
    rows = {row["metric"]: row for row in result["metrics"]}
    forbidden = rows["forbidden_rate"]
    assert forbidden["a"] == a["metrics"]["forbidden_rate"] and forbidden["b"] == b["metrics"]["forbidden_rate"]
    assert forbidden["difference_interval"][1] < 0 and forbidden["significant"]  # DNG removes the mode: significantly fewer
    assert forbidden["interval_method"].startswith("paired-bootstrap")
    assert Store(db).comparison(a["run_id"], b["run_id"]).empty  # compare reads only
    saved = cli_json(capsys, "compare", a["run_id"], b["run_id"], "--save")
    assert saved["metrics"] == result["metrics"]
    assert set(Store(db).comparison(a["run_id"], b["run_id"]).metric) == set(rows)  # --save stores it for the dashboard
    other_seed = cli_json(capsys, "run", "--method", "dng", *SMALL, "--no-baseline", "--seed", "1")
    assert bench_main(["compare", a["run_id"], other_seed["run_id"]]) == 2
    assert "do not share their noise (they differ in seed)" in capsys.readouterr().err


def test_run_shows_the_unguided_run_on_the_same_noise(db, capsys):
    result = cli_json(capsys, "run", "--method", "dng", *SMALL)
    baseline = result["baseline"]
    assert baseline["metrics"]["forbidden_rate"] > result["metrics"]["forbidden_rate"]
    assert {row["metric"] for row in baseline["comparison"]} >= {"forbidden_rate", "kl_classes", "wasserstein"}
    assert baseline["summary"].startswith("Against unguided sampling on the same noise, dng improved the forbidden share")
    assert result["intervals"]["forbidden_rate"][0] <= result["metrics"]["forbidden_rate"] <= result["intervals"]["forbidden_rate"][1]
    second = cli_json(capsys, "run", "--method", "np", *SMALL)
    assert second["baseline"]["run_id"] == baseline["run_id"] and second["baseline"]["reused"]
    capsys.readouterr()
    assert bench_main(["run", "--method", "np", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "beside the unguided run" in out and "change (paired 95% CI)" in out and "Against unguided sampling" in out


def test_rank_groups_follow_interval_overlap():
    values = pd.Series([1.0, 1.1, 2.0, 2.05])
    lows, highs = values - 0.2, values + 0.2
    assert rank_groups(values, lows, highs, lower_better=True) == [(1, 2), (1, 2), (3, 4), (3, 4)]
    assert rank_groups(values, lows, highs, lower_better=False) == [(3, 4), (3, 4), (1, 2), (1, 2)]


def test_calibrate_says_where_the_method_diverged(db, capsys, tmp_path):
    method = tmp_path / "unstable.py"
    method.write_text(UNSTABLE)
    assert bench_main(["calibrate", "--method", f"{method}:UnstableNP", *SMALL, "--target", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "scale 2          stopped: method 'unstable-np' produced NaN or inf at step 0" in out and "no scale tried was safe at the target" in out
