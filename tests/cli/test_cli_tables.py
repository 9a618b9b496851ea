"""What `bench` prints for people and scripts: tables within 120 columns, rank groups, the safe rule,
run-id prefixes, the leaderboard's JSON/CSV schema, --version, help and an example for every subcommand."""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
from importlib.metadata import version

import duckdb
import pandas as pd
import pytest

from negguide.bench import cli
from negguide.bench.cli import main as bench_main
from negguide.bench.run.calibrate import calibration_id, samples_to_establish, smallest_establishable
from negguide.bench.run.plan import RunRequest
from negguide.results.leaderboard import RECORD_FIELDS, calibrated_targets, rank_groups, rank_runs
from negguide.results.store import CalibrationRecord, Store

TASK = "gmm1d-remove-1"
SMALL = ["--task", TASK, "--samples", "512", "--steps", "100", "--no-progress"]
WIDTH = 120


def call(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = bench_main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_fits(text: str) -> None:
    too_wide = [line for line in text.splitlines() if len(line) > WIDTH]
    assert not too_wide, f"{len(too_wide)} lines wider than {WIDTH}: {too_wide[0]!r}"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A store with a sweep of NP beside the unguided run and DNG calibrated at 5% (not the default 1%); what they printed."""
    db = str(tmp_path_factory.mktemp("board") / "bench.duckdb")
    printed = {}
    for name, args in (("sweep", ["sweep", "--method", "np", *SMALL, "--param", "scale=1,2"]),
                       ("calibrate", ["calibrate", "--method", "dng", *SMALL, "--target", "0.05"])):
        out = io.StringIO()
        from contextlib import redirect_stdout

        with redirect_stdout(out):
            assert bench_main([*args, "--db", db]) == 0
        printed[name] = out.getvalue()
    return db, printed


# Ranks as groups ---------------------------------------------------------------------------------

def test_overlapping_intervals_give_a_rank_range():
    values = pd.Series([1.0, 1.1, 1.2, 5.0])
    assert rank_groups(values, values - 0.3, values + 0.3, lower_better=True) == [(1, 3), (1, 3), (1, 3), (4, 4)]
    chain = pd.Series([0.5, 1.45, 2.45])  # A overlaps B, B overlaps C, A and C apart
    assert rank_groups(chain, chain - 0.5, chain + 0.55, lower_better=True) == [(1, 2), (1, 3), (2, 3)]
    assert rank_groups(chain, chain - 0.5, chain + 0.55, lower_better=False) == [(2, 3), (1, 3), (1, 2)]


def test_ranked_table_has_text_groups_and_integer_ends():
    runs = pd.DataFrame({"method": ["a", "b", "c", "d", "e"], "wasserstein": [1.0, 1.1, 1.2, 5.0, 0.1],
                         "wasserstein__low": [0.7, 0.8, 0.9, 4.7, 0.0], "wasserstein__high": [1.3, 1.4, 1.5, 5.3, 0.2],
                         "forbidden_rate": [0.0, 0.0, 0.0, 0.0, 0.3], "forbidden_rate__low": [0.0] * 4 + [0.25],
                         "forbidden_rate__high": [0.01] * 4 + [0.35]})
    ranked = rank_runs(runs, "wasserstein", threshold=0.02)
    assert ranked["rank"].tolist() == ["1-3", "1-3", "1-3", "4", "5"]  # e is best on quality but not safe: after the safe ones
    assert ranked["rank_best"].tolist() == [1, 1, 1, 4, 5] and ranked["rank_worst"].tolist() == [3, 3, 3, 4, 5]
    assert not any("." in rank for rank in ranked["rank"])


# One meaning of safe -------------------------------------------------------------------------------

def test_calibration_chooses_the_smallest_scale_whose_upper_bound_meets_the_target(board):
    db, printed = board
    calibration = Store(db).calibrations(TASK)
    assert calibration["rule"].tolist() == ["upper95"]
    points = json.loads(calibration["points"].iloc[0])
    chosen = next(p for p in points if p["run_id"] == calibration["run_id"].iloc[0])
    assert chosen["interval"][1] <= 0.05
    assert all(p["interval"][1] > 0.05 for p in points if p["scale"] < chosen["scale"])  # nothing smaller is safe
    assert "chosen scale" in printed["calibrate"] and "wasserstein" in printed["calibrate"]  # quality at the chosen scale
    assert "kl_classes" in printed["calibrate"] and "[" in printed["calibrate"].split("chosen scale")[1]  # with intervals
    assert_fits(printed["calibrate"])


def test_a_target_the_protocol_cannot_establish_is_refused_before_any_run(db, capsys):
    assert round(smallest_establishable(256), 4) == 0.0148 and round(smallest_establishable(2048), 4) == 0.0019
    code, _, err = call(capsys, "calibrate", "--method", "np", "--task", TASK, "--samples", "256", "--steps", "50", "--target", "0.01")
    assert code == 2 and err.count("\n") == 1 and "cannot be established with 256 samples" in err
    assert f"--samples {samples_to_establish(0.01)}" in err and not db.exists()


def test_describe_task_says_which_targets_each_protocol_establishes(capsys):
    from negguide.bench.tasks import get_task

    code, out, _ = call(capsys, "describe", "task", "mnist-remove-0", "--json")
    protocols = json.loads(out)["establishable"]["protocols"]
    for name, protocol in get_task("mnist-remove-0").protocols.items():
        floor = smallest_establishable(protocol.samples)
        assert protocols[name]["units"] == protocol.samples and protocols[name]["smallest_target"] == pytest.approx(floor)
        assert protocols[name]["targets"]["0.01"] == (floor <= 0.01)  # the task's threshold and the default target
    code, out, _ = call(capsys, "describe", "task", TASK)
    assert code == 0 and "establishable targets" in out and "smallest target" in out


def test_old_calibrations_stay_distinguishable_and_old_stores_open(tmp_path):
    request = RunRequest(task=TASK, method="np", params={})
    old_key = [TASK, "np", {}, None, None, None, None, None, 0.01]  # what the id hashed before the rule entered it
    import hashlib

    assert calibration_id(request, 0.01) != hashlib.sha256(json.dumps(old_key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = tmp_path / "old.duckdb"
    store = Store(path)
    store.write_calibration(CalibrationRecord("new", TASK, "np", "{}", 0.01, 2.0, "r1", True, "[]", 0.0, "upper95"))
    con = duckdb.connect(str(path))  # as a store written before the rule: the column gone, one old row
    con.execute("ALTER TABLE calibrations DROP COLUMN rule")
    con.execute("INSERT INTO calibrations VALUES ('old', ?, 'np', '{}', 0.02, 1.0, 'r0', true, '[]', to_timestamp(0))", [TASK])
    con.close()
    assert dict(zip(store.calibrations().calibration_id, store.calibrations().rule)) == {"new": "point", "old": "point"}
    store.write_calibration(CalibrationRecord("newer", TASK, "np", "{}", 0.01, 2.0, "r1", True, "[]", 1.0, "upper95"))  # migrates
    assert dict(zip(store.calibrations().calibration_id, store.calibrations().rule))["newer"] == "upper95"
    assert calibrated_targets(store, TASK) == [0.01, 0.02]


# Tables, JSON and CSV --------------------------------------------------------------------------------

def test_leaderboard_heads_every_calibrated_target_within_120_columns(board, capsys):
    db, _ = board
    assert calibrated_targets(Store(db), TASK) == [0.05]
    code, out, _ = call(capsys, "leaderboard", "--db", db, "--exploratory")
    assert code == 0 and f"{TASK}: matched safety at 0.05" in out
    assert_fits(out)
    ranks = []
    for block in out.split("\n\n"):
        lines = block.splitlines()
        header = next((i for i, line in enumerate(lines) if line.startswith("rank ")), None)
        ranks += [line.split()[0] for line in lines[header + 1:]] if header is not None else []
    assert ranks and all(re.fullmatch(r"\d+(-\d+)?", rank) for rank in ranks)  # "1", "1-3": never "1.0"


def test_leaderboard_json_and_csv_schema(board, capsys):
    db, _ = board
    code, out, _ = call(capsys, "leaderboard", "--db", db, "--exploratory", "--json")
    records = json.loads(out)
    assert code == 0 and isinstance(records, list) and {r["table"] for r in records} == {"matched", "runs"}
    metrics = ("forbidden_rate", "wasserstein", "kl_classes")
    for record in records:
        assert set(RECORD_FIELDS) <= set(record)
        assert isinstance(record["rank"], str) and isinstance(record["rank_best"], int) and isinstance(record["rank_worst"], int)
        assert record["rank_best"] <= record["rank_worst"]
        for metric in metrics:
            assert {metric, f"{metric}_low", f"{metric}_high"} <= set(record)
            assert record[f"{metric}_low"] <= record[metric] <= record[f"{metric}_high"]
    matched = [r for r in records if r["table"] == "matched"]
    assert [r["target"] for r in matched] == [0.05] and matched[0]["rule"] == "upper95" and matched[0]["safe"]
    code, out, _ = call(capsys, "leaderboard", "--db", db, "--exploratory", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == len(records) and list(rows[0]) == list(dict.fromkeys(k for r in records for k in r))
    assert [row["run_id"] for row in rows] == [r["run_id"] for r in records]


def test_runs_lists_stored_runs_with_short_ids_and_changed_parameters(board, capsys):
    db, _ = board
    code, out, _ = call(capsys, "runs", "--db", db)
    stored = Store(db).runs()
    assert code == 0 and len(out.splitlines()) == len(stored) + 2  # a header line, the column names, one line per run
    assert_fits(out)
    assert all(run_id[:8] in out and run_id not in out for run_id in stored.run_id)
    assert "scale=2.0" in out and "prior=" not in out  # only parameters that differ from the method's defaults
    code, out, _ = call(capsys, "runs", "--db", db, "--method", "np", "--json")
    records = json.loads(out)
    assert code == 0 and {r["method"] for r in records} == {"np"} and len(records) == 2
    assert {"run_id", "task", "method", "params", "params_changed", "sampler", "protocol", "samples", "date",
            "forbidden_rate", "forbidden_rate_low", "forbidden_rate_high", "quality_metric"} <= set(records[0])


def test_sweep_ends_with_one_row_per_point_after_the_unguided_run(board):
    _, printed = board
    lines = printed["sweep"].splitlines()
    assert lines[1].split()[:3] == ["point", "forbidden_rate", "wasserstein"]
    assert [line.split()[0] for line in lines[2:]] == ["unguided", "scale=1.0", "scale=2.0"]
    assert_fits(printed["sweep"])


def test_fit_table_drops_low_priority_columns_then_squeezes():
    rows = [{"id": "a" * 8, "params": "x" * 200, "date": "2026-01-01 00:00", "forbidden": "0.01 [0, 0.02]"}]
    text = cli.fit_table(rows, ["id", "params", "date", "forbidden"], ["date"], squeeze="params")
    assert "date" not in text and "..." in text and "forbidden" in text
    assert_fits(text)


# Run-id prefixes -----------------------------------------------------------------------------------------

def test_id_prefixes_resolve_and_bad_ones_fail_in_one_line(board, capsys):
    db, _ = board
    runs = Store(db).runs()
    a, b = runs.run_id.iloc[0], runs.run_id.iloc[1]
    code, out, err = call(capsys, "compare", a[:8], b[:6], "--db", db, "--json")
    assert code == 0, err
    assert json.loads(out)["run_a"] == a and json.loads(out)["run_b"] == b
    con = duckdb.connect(db)  # a second id sharing a's first 6 characters makes that prefix ambiguous
    con.execute("INSERT INTO runs SELECT * REPLACE (? AS run_id) FROM runs WHERE run_id = ?", [a[:6] + "0" * 10, a])
    con.close()
    for prefix, message in ((a[:6], "is ambiguous"), ("zzzzzz", "no stored run id starts with"), (a[:3], "too short")):
        code, _, err = call(capsys, "compare", prefix, b, "--db", db)
        assert code == 2 and err.count("\n") == 1 and message in err and err.startswith("error: ")
    duckdb.connect(db).execute("DELETE FROM runs WHERE run_id = ?", [a[:6] + "0" * 10]).close()


# Version, help, examples, subcommands ----------------------------------------------------------------------

def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"bench {version('negguide-bench')}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_and_option_has_help_and_an_example():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = {choice.dest: choice.help for choice in action._choices_actions}
    for name, sub in _subparsers(parser).items():
        assert listed.get(name), f"`bench {name}` has no one-line help"
        assert sub.epilog and sub.epilog.startswith("example:\n  bench "), f"`bench {name}` has no example"
        for option in sub._actions:
            if option.help != argparse.SUPPRESS:
                assert option.help, f"`bench {name}` {option.option_strings or option.dest} has no help"
        assert "profile" not in sub.format_help().lower(), f"`bench {name} --help` says profile; the word is protocol"
    assert {"runs", "report", "quality", "screenshot", "export-site"} <= set(listed)
    train = _subparsers(parser)["train"].format_help()
    assert "ddpm" in train and "cifar10-forget" in train


def test_the_old_word_profile_is_still_accepted():
    args = cli.build_parser().parse_args(["run", "--method", "np", "--task", TASK, "--profile", "standard"])
    assert args.protocol == "standard"


def test_passthrough_subcommands_reach_their_modules(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        bench_main(["report", "--help"])
    assert exit_.value.code == 0 and "--targets" in capsys.readouterr().out  # the report's own options
    monkeypatch.setitem(cli.PASSTHROUGH, "export-site", ("negguide.dashboard.not_written_yet", "", ""))
    code, _, err = call(capsys, "export-site", "somewhere")
    assert code == 2 and err.count("\n") == 1 and "negguide.dashboard.not_written_yet" in err
