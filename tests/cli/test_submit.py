"""Submit, import, verify: the round trip of a result bundle, and tampered bundles refused."""
from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from negguide.bench.cli import main as bench_main
from negguide.bench.submit import SUITES, Suite, SuiteEntry
from negguide.results.leaderboard import leaderboard_table
from negguide.results.store import Store

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = f"{REPO / 'examples' / 'decaying_np.py'}:DecayingNP"


def cli_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    code = bench_main([*args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


# The smoke suite's tasks and target at fewer samples and steps (the suite's own runs take minutes on 2 cores).
SMALL_SMOKE = Suite("smoke", "1", "the smoke suite, small", tuple(SuiteEntry(task, "quick", (0.01,), samples=512, steps=100)
                                                               for task in ("gmm1d-remove-1", "gmm2d-remove-3")))


@pytest.fixture(scope="module")
def submitted(tmp_path_factory) -> tuple[Path, list[str]]:
    """The example method submitted on the smoke suite's tasks and target, at 512 samples and 100 steps."""
    folder = tmp_path_factory.mktemp("submit")
    out = folder / "bundle.zip"
    assert [(e.task, e.protocol, e.targets) for e in SUITES["smoke"].entries] == [(e.task, e.protocol, e.targets) for e in SMALL_SMOKE.entries]
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.setitem(SUITES, "smoke", SMALL_SMOKE)
        code = bench_main(["submit", EXAMPLE, "--suite", "smoke", "--out", str(out), "--name", "tester", "--db", str(folder / "mine.duckdb"),
                           "--json", "--no-progress"])
    assert code == 0
    result = json.loads(stdout.getvalue().strip().splitlines()[-1])
    assert result["bundle"] == str(out)
    return out, result["runs"]


def test_round_trip_submit_import_verify(submitted, tmp_path, capsys):
    out, runs = submitted
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        manifest = json.loads(archive.read("manifest.json"))
    assert all(name == "manifest.json" or name.endswith(".npz") for name in names)
    assert manifest["schema_version"] == 2 and manifest["submitter"] == "tester"
    assert manifest["method"]["source"] == Path(EXAMPLE.split(":")[0]).read_text() and manifest["method"]["name"] == "decaying-np"
    assert {run["config"]["task"] for run in manifest["runs"]} == {"gmm1d-remove-1", "gmm2d-remove-3"}
    assert [c["target"] for c in manifest["calibrations"]] == [0.01, 0.01]
    bundled = {run["run_id"] for run in manifest["runs"]}
    assert set(runs) <= bundled and {p for c in manifest["calibrations"] for p in c["points"]} == bundled
    db = tmp_path / "theirs.duckdb"
    imported = cli_json(capsys, "import", str(out), "--db", str(db))
    assert set(imported["runs"]) == bundled and imported["status"] == "self-reported"
    table = leaderboard_table(Store(db), exploratory=True)  # fewer samples than the protocol's: exploratory runs
    assert set(table.method) == {"decaying-np"} and set(table.provenance) == {"self-reported"}
    assert set(Store(db).calibrations().run_id) == set(runs)
    verified = cli_json(capsys, "verify", str(out), "--db", str(db), "--samples", "20")
    assert verified["verified"] and verified["checked_samples"] == 20 * len(bundled) and set(verified["marked"]) == bundled
    assert set(leaderboard_table(Store(db), exploratory=True).provenance) == {"verified"}


def test_suites_are_listed(capsys):
    assert bench_main(["list", "suites"]) == 0
    out = capsys.readouterr().out
    assert "smoke" in out and "mnist-remove-0 (standard, targets 0.01)" in out and "paper" in out


def test_a_method_card_names_formula_cost_and_reference(capsys, tmp_path):
    capsys.readouterr()
    assert bench_main(["describe", "method", "dng", "--db", str(tmp_path / "none.duckdb"), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["formula"].startswith("Dynamic Negative Guidance") and "Algorithms 1-2" in card["reference"]
    assert card["needs"] == ["uncond", "neg"] and "2 network predictions per step" in card["cost"]
    assert {p["name"] for p in card["parameters"]} >= {"scale", "prior", "tau", "t_low", "t_high"}
