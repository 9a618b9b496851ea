"""Submit, import, verify: the round trip of a result bundle, and tampered bundles refused."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from negguide.bench.cli import main as bench_main
from negguide.results import bundle as bundle_module
from negguide.results.bundle import config_run_id, sha256
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


@pytest.fixture(scope="module")
def submitted(tmp_path_factory) -> tuple[Path, list[str]]:
    """The example method submitted on the smoke suite (about a minute on 2 cores)."""
    folder = tmp_path_factory.mktemp("submit")
    out = folder / "bundle.zip"
    import contextlib

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
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
    assert manifest["method"]["source"] == Path(EXAMPLE.split(":")[0]).read_text() and manifest["submitter"] == "tester"
    assert {run["task"] for run in manifest["runs"]} == {"gmm1d-remove-1", "gmm2d-remove-3"}
    assert all(run["calibration"]["target"] == 0.01 and run["metrics"]["forbidden_rate"]["value"] <= 0.01 for run in manifest["runs"])
    db = tmp_path / "theirs.duckdb"
    imported = cli_json(capsys, "import", str(out), "--db", str(db))
    assert imported == {"runs": runs, "status": "self-reported"}
    table = leaderboard_table(Store(db))
    assert set(table.method) == {"decaying-np"} and set(table.provenance) == {"self-reported"}
    verified = cli_json(capsys, "verify", str(out), "--db", str(db), "--shards", "1")
    assert verified["verified"] and verified["checked_shards"] == 2
    assert set(leaderboard_table(Store(db)).provenance) == {"verified"}


def _rewrite(source: Path, target: Path, change) -> Path:
    """A copy of the bundle with `change(members)` applied to {name: bytes} (manifest as a dict under 'manifest')."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(members.pop("manifest.json"))
    change(manifest, members)
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        for name, payload in members.items():
            archive.writestr(name, payload)
    return target


def _first_run_file(manifest: dict, kind: str) -> dict:
    return manifest["runs"][0]["files"][kind]


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def change_metric(manifest, members):
    manifest["runs"][0]["metrics"]["wasserstein"]["value"] *= 0.9


def change_samples(manifest, members):
    entry = _first_run_file(manifest, "samples")
    with np.load(io.BytesIO(members[entry["path"]])) as data:
        x = data["x"].copy()
    x[0] += 1.0
    members[entry["path"]] = _npz(x=x)
    entry["sha256"], entry["bytes"] = sha256(members[entry["path"]]), len(members[entry["path"]])


def change_samples_keep_digest(manifest, members):
    entry = _first_run_file(manifest, "samples")
    payload = bytearray(members[entry["path"]])
    payload[len(payload) // 2] ^= 0xFF  # one byte inside the array data
    members[entry["path"]] = bytes(payload)


def drop_file(manifest, members):
    del members[_first_run_file(manifest, "records")["path"]]


def member_outside(manifest, members):
    members["../outside.npz"] = _npz(x=np.zeros(1))


def pickled_array(manifest, members):
    entry = _first_run_file(manifest, "records")
    members[entry["path"]] = _npz(label=np.array([{"evil": 1}], dtype=object))
    entry["sha256"], entry["bytes"] = sha256(members[entry["path"]]), len(members[entry["path"]])


def unknown_task_version(manifest, members):
    run = manifest["runs"][0]
    run["task_version"] = run["config"]["task_version"] = "999"
    run["run_id"] = config_run_id(run["config"])
    for kind, entry in run["files"].items():  # keep the member names consistent with the new id
        new_path = f"runs/{run['run_id']}/{kind}.npz"
        members[new_path] = members.pop(entry["path"])
        entry["path"] = new_path


TAMPERED = {
    "changed metric value": (change_metric, "metric wasserstein states"),
    "changed sample array": (change_samples, "the samples differ from the samples its records were judged on"),
    "changed sample bytes": (change_samples_keep_digest, "does not match its SHA-256"),
    "missing file": (drop_file, "is missing from the archive"),
    "member outside the bundle": (member_outside, "lies outside the bundle"),
    "pickled array": (pickled_array, "object arrays are refused"),
    "unknown task version": (unknown_task_version, "version 999 is not this harness's"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_bundle_is_refused_and_the_store_unchanged(case, submitted, tmp_path, capsys):
    change, message = TAMPERED[case]
    bad = _rewrite(submitted[0], tmp_path / "bad.zip", change)
    db = tmp_path / "theirs.duckdb"
    assert bench_main(["run", "--method", "none", "--task", "gmm1d-remove-1", "--samples", "64", "--steps", "10", "--db", str(db),
                       "--no-progress", "--no-baseline"]) == 0
    before = Store(db).runs().run_id.tolist()
    capsys.readouterr()
    assert bench_main(["import", str(bad), "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert Store(db).runs().run_id.tolist() == before
    assert not [p for p in (tmp_path / "artifacts").iterdir() if p.name.startswith(".import")]


def test_a_bundle_over_the_size_limit_is_refused(submitted, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bundle_module, "MAX_BUNDLE_BYTES", 1000)
    assert bench_main(["import", str(submitted[0]), "--db", str(tmp_path / "x.duckdb")]) == 2
    assert "over the limit of 1000" in capsys.readouterr().err
    assert not (tmp_path / "x.duckdb").exists()


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
