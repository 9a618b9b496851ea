"""A hostile submitter's bundles: each crafted from an honest one, each refused on one line with exit 2 and the store
unchanged; a forged bundle caught by verify at its stated power; imports that never overwrite and survive a kill."""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from negguide.bench import submit as submit_module
from negguide.bench.cli import main as bench_main
from negguide.bench.submit import Suite, SuiteEntry, choose_ids, detectable_share
from negguide.results import bundle as bundle_module
from negguide.results.bundle import config_run_id, sha256
from negguide.results.store import Store

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "decaying_np.py"
TINY = Suite("tiny-test", "1", "gmm1d-remove-1, 256 samples x 50 steps, 5% forbidden",
             (SuiteEntry("gmm1d-remove-1", "quick", (0.05,), samples=256, steps=50),))


@pytest.fixture(autouse=True)
def tiny_suite(monkeypatch):
    monkeypatch.setitem(submit_module.SUITES, TINY.name, TINY)


@pytest.fixture(scope="module")
def honest(tmp_path_factory) -> Path:
    """An honest bundle of the example method on a cheap suite (a few seconds)."""
    folder = tmp_path_factory.mktemp("honest")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(submit_module.SUITES, TINY.name, TINY)
        out, _ = submit_module.submit(f"{EXAMPLE}:DecayingNP", TINY, folder / "honest.zip", Store(folder / "mine.duckdb"), submitter="tester")
    return out


# ---- crafting ---------------------------------------------------------------------------

def members_of(path: Path) -> tuple[dict, dict[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    return json.loads(members.pop("manifest.json")), members


def write_zip(target: Path, manifest: dict, members: dict[str, bytes], extra: list[tuple[str, bytes]] = ()) -> Path:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        for name, payload in [*members.items(), *extra]:
            archive.writestr(name, payload)
    return target


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def arrays_of(payload: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(payload)) as data:
        return {k: data[k] for k in data.files}


def set_member(manifest: dict, members: dict, run: dict, kind: str, payload: bytes) -> None:
    entry = run["files"][kind]
    members[entry["path"]] = payload
    entry["sha256"], entry["bytes"] = sha256(payload), len(payload)


def rehash(manifest: dict, members: dict, run: dict) -> None:
    """Give a run whose config changed its new id (and move its files), as a careful forger would."""
    old = run["run_id"]
    run["run_id"] = config_run_id(run["config"])
    for kind, entry in run["files"].items():
        new_path = f"runs/{run['run_id']}/{kind}.npz"
        members[new_path] = members.pop(entry["path"])
        entry["path"] = new_path
    for calibration in manifest["calibrations"]:
        calibration["points"] = [run["run_id"] if p == old else p for p in calibration["points"]]


def crafted(honest: Path, tmp_path: Path, change) -> Path:
    manifest, members = members_of(honest)
    extra = change(manifest, members) or []
    return write_zip(tmp_path / "bad.zip", manifest, members, extra)


def patch_bytes(path: Path, find: bytes, offset: int, value: bytes, every: bool = True) -> None:
    data = bytearray(path.read_bytes())
    start = 0
    while (at := data.find(find, start)) >= 0:
        data[at + offset: at + offset + len(value)] = value
        start = at + 1
        if not every:
            break
    path.write_bytes(bytes(data))


# ---- the crafted cases ----------------------------------------------------------------

def change_metric(m, members):
    m["runs"][0]["metrics"]["forbidden_rate"]["value"] += 0.01


def change_sample_bytes(m, members):
    path = m["runs"][0]["files"]["samples"]["path"]
    payload = bytearray(members[path])
    payload[len(payload) // 2] ^= 0xFF
    members[path] = bytes(payload)


def drop_file(m, members):
    del members[m["runs"][0]["files"]["traces"]["path"]]


def member_outside(m, members):
    return [("../outside.npz", npz(x=np.zeros(1)))]


def duplicate_member(m, members):
    path = m["runs"][0]["files"]["samples"]["path"]
    return [(path, members[path])]


def object_array(m, members):
    run = m["runs"][0]
    set_member(m, members, run, "samples", npz(x=np.array([{"evil": 1}] * run["config"]["samples"], dtype=object)))


def records_carried(m, members):
    return [(f"runs/{m['runs'][0]['run_id']}/records.npz", npz(label=np.zeros(256)))]


def non_npy_inside_npz(m, members):
    run = m["runs"][0]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as inner:
        inner.writestr("x.npy", members[run["files"]["samples"]["path"]][:0] + b"not an array")
        inner.writestr("run.py", b"print('hi')")
    set_member(m, members, run, "samples", buffer.getvalue())


def huge_npy_header(m, members):
    run = m["runs"][0]
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (10000000000000,), }"
    header += b" " * (63 - len(header) % 64) + b"\n"
    payload = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\x00" * 64
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as inner:
        inner.writestr("x.npy", payload)
    set_member(m, members, run, "samples", buffer.getvalue())


def float_trace_steps(m, members):
    run = m["runs"][0]
    traces = arrays_of(members[run["files"]["traces"]["path"]])
    traces["t"] = traces["t"].astype(np.float64)
    set_member(m, members, run, "traces", npz(**traces))


def nan_samples(m, members):
    run = m["runs"][0]
    x = arrays_of(members[run["files"]["samples"]["path"]])["x"]
    x[3] = np.nan
    set_member(m, members, run, "samples", npz(x=x))


def infinite_wall_time(m, members):
    m["runs"][0]["wall_time_s"] = float("inf")


def huge_wall_time(m, members):
    m["runs"][0]["wall_time_s"] = 1e300


def calibration_scale_given(m, members):
    m["calibrations"][0]["scale"] = 0.05


def calibration_point_elsewhere(m, members):
    m["calibrations"][0]["points"].append("0123456789abcdef")


def builtin_name(m, members):
    m["method"]["name"] = "dng"
    for run in m["runs"]:
        run["config"]["method"] = "dng"
        rehash(m, members, run)


def source_changed_digest_kept(m, members):
    m["method"]["source"] += "\nopen('pwned', 'w').write('ran')\n"


def source_changed_digest_updated(m, members):
    m["method"]["source"] += "\nopen('pwned', 'w').write('ran')\n"
    m["method"]["source_digest"] = hashlib.sha256(m["method"]["source"].encode()).hexdigest()[:16]


def spec_without_colon(m, members):
    m["method"]["spec"] = "decaying_np.py"


def spec_parent_class(m, members):
    m["method"]["spec"] = "..:DecayingNP"


def config_field_changed(m, members):
    run = m["runs"][0]
    run["config"]["schedule"]["T"] = 999
    rehash(m, members, run)


def config_field_added(m, members):
    run = m["runs"][0]
    run["config"]["judge"] = "mine"
    rehash(m, members, run)


def unknown_task_version(m, members):
    run = m["runs"][0]
    run["config"]["task_version"] = "999"
    rehash(m, members, run)


def unknown_suite(m, members):
    m["suite"]["name"] = "nightly"


def old_schema(m, members):
    m["schema_version"] = 1


TAMPERED = {
    "changed metric": (change_metric, "metric forbidden_rate states"),
    "changed sample bytes, digest kept": (change_sample_bytes, "does not match its SHA-256"),
    "missing file": (drop_file, "is missing from the archive"),
    "member outside the bundle": (member_outside, "lies outside the bundle"),
    "duplicate member name": (duplicate_member, "appears twice"),
    "object array": (object_array, "object arrays are refused"),
    "records carried": (records_carried, "is not listed in the manifest"),
    "non-npy member inside an npz": (non_npy_inside_npz, "is not one of *.npy"),
    "npy header claiming 10^13 elements": (huge_npy_header, "its header promises 80000000000000 bytes"),
    "float trace steps": (float_trace_steps, "traced steps as integers"),
    "NaN samples": (nan_samples, "samples hold NaN or inf"),
    "wall time Infinity": (infinite_wall_time, "wall_time_s"),
    "wall time 1e300": (huge_wall_time, "wall_time_s"),
    "calibration scale given": (calibration_scale_given, "calibrations.0.scale"),
    "calibration point outside the bundle": (calibration_point_elsewhere, "every point must be a run of the bundle"),
    "built-in method name": (builtin_name, "built-in names are reserved"),
    "source changed, digest kept": (source_changed_digest_kept, "source digests to"),
    "source changed, digest updated": (source_changed_digest_updated, "config method_source"),
    "spec without ':'": (spec_without_colon, "carries a source"),
    "spec '..:Cls'": (spec_parent_class, "is not file.py:ClassName"),
    "config field changed and rehashed": (config_field_changed, "config field 'schedule'"),
    "config field added and rehashed": (config_field_added, "config field 'judge'"),
    "unknown task version": (unknown_task_version, "version 999 is not this harness's"),
    "unknown suite": (unknown_suite, "unknown suite 'nightly'"),
    "old schema": (old_schema, "schema_version"),
}


def store_state(db: Path) -> tuple:
    store = Store(db)
    artifacts = sorted(p.name for p in (db.parent / "artifacts").iterdir()) if (db.parent / "artifacts").exists() else []
    return (store.runs().run_id.tolist() if store.exists() else None), store.calibrations().calibration_id.tolist(), artifacts


def refused(capsys, args: list[str], message: str) -> str:
    capsys.readouterr()
    assert bench_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    return err


@pytest.fixture
def local_store(tmp_path) -> Path:
    db = tmp_path / "theirs.duckdb"
    assert bench_main(["run", "--method", "none", "--task", "gmm1d-remove-1", "--samples", "64", "--steps", "10", "--db", str(db),
                       "--no-progress", "--no-baseline"]) == 0
    return db


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_crafted_bundle_is_refused_on_one_line_and_the_store_unchanged(case, honest, tmp_path, local_store, capsys):
    change, message = TAMPERED[case]
    bad = crafted(honest, tmp_path, change)
    before = store_state(local_store)
    refused(capsys, ["import", str(bad), "--db", str(local_store)], message)
    assert store_state(local_store) == before
    assert not Path("pwned").exists()


@pytest.mark.parametrize("case", ["source changed, digest kept", "spec without ':'", "spec '..:Cls'", "built-in method name"])
def test_verify_runs_nothing_of_a_bundle_whose_method_does_not_check_out(case, honest, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = crafted(honest, tmp_path, TAMPERED[case][0])
    err = refused(capsys, ["verify", str(bad), "--db", str(tmp_path / "v.duckdb")], TAMPERED[case][1])
    assert "verify now runs" not in err and not (tmp_path / "pwned").exists()


def test_fresh_store_is_not_created_by_a_refused_import(honest, tmp_path, capsys):
    bad = crafted(honest, tmp_path, huge_wall_time)
    refused(capsys, ["import", str(bad), "--db", str(tmp_path / "new" / "x.duckdb")], "wall_time_s")
    assert not (tmp_path / "new" / "x.duckdb").exists()


# ---- archive-level attacks --------------------------------------------------------------

def test_an_encrypted_member_is_refused(honest, tmp_path, local_store, capsys):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(honest.read_bytes())
    patch_bytes(bad, b"PK\x01\x02", 8, b"\x01\x00")  # general purpose flag of every central directory entry: encrypted
    refused(capsys, ["import", str(bad), "--db", str(local_store)], "is encrypted")


def test_an_unknown_compression_method_is_refused(honest, tmp_path, local_store, capsys):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(honest.read_bytes())
    patch_bytes(bad, b"PK\x01\x02", 10, struct.pack("<H", 99))
    refused(capsys, ["import", str(bad), "--db", str(local_store)], "compression method 99")


def test_a_bad_crc_is_refused(honest, tmp_path, local_store, capsys):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(honest.read_bytes())
    patch_bytes(bad, b"PK\x01\x02", 16, b"\x00\x00\x00\x00", every=False)  # the manifest's CRC-32
    patch_bytes(bad, b"PK\x03\x04", 14, b"\x00\x00\x00\x00", every=False)
    refused(capsys, ["import", str(bad), "--db", str(local_store)], "cannot be read")


def test_a_member_inflating_past_its_declared_size_is_refused_without_inflating_it(honest, tmp_path, local_store, capsys):
    manifest, members = members_of(honest)
    big = b"\x00" * (64 * 1024**2)
    bad = write_zip(tmp_path / "bomb.zip", manifest, members, [("runs/bomb.npz", big)])
    size = struct.pack("<I", len(big))
    patch_bytes(bad, size, 0, struct.pack("<I", 1000))  # declared (local and central) sizes: 1,000 bytes
    tracemalloc.start()
    try:
        capsys.readouterr()
        assert bench_main(["import", str(bad), "--db", str(local_store)]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert capsys.readouterr().err.count("\n") == 1 and peak < 32 * 1024**2


def test_an_npz_whose_arrays_unpack_past_the_budget_is_refused(honest, tmp_path, local_store, capsys, monkeypatch):
    monkeypatch.setattr(bundle_module, "MAX_UNPACKED_BYTES", 8 * 1024**2)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros(4 * 1024**2))  # 32 MB of zeros in a few KB

    def bomb(m, members):
        set_member(m, members, m["runs"][0], "samples", buffer.getvalue())

    refused(capsys, ["import", str(crafted(honest, tmp_path, bomb)), "--db", str(local_store)], "over the limit of")


def test_a_bundle_over_the_size_limit_is_refused(honest, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bundle_module, "MAX_BUNDLE_BYTES", 1000)
    refused(capsys, ["import", str(honest), "--db", str(tmp_path / "x.duckdb")], "over the limit of 1000")
    assert not (tmp_path / "x.duckdb").exists()


# ---- never overwrite, atomic ------------------------------------------------------------

def test_import_refuses_a_run_id_that_exists_here_and_keeps_local_artifacts(honest, tmp_path, capsys):
    db = tmp_path / "mine.duckdb"
    manifest, _ = members_of(honest)
    run = manifest["runs"][0]
    scale = run["config"]["params"]["scale"]
    assert bench_main(["run", "--method", f"{EXAMPLE}:DecayingNP", "--task", "gmm1d-remove-1", "--samples", "256", "--steps", "50",
                       "--param", f"scale={scale:.6g}", "--db", str(db), "--no-progress", "--no-baseline"]) == 0
    assert run["run_id"] in Store(db).runs().run_id.tolist()
    before = store_state(db)
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "artifacts").rglob("*"))
    refused(capsys, ["import", str(honest), "--db", str(db)], f"run {run['run_id']} is already in the store")
    assert store_state(db) == before and sorted(p.relative_to(tmp_path) for p in (tmp_path / "artifacts").rglob("*")) == files
    assert set(Store(db).runs().provenance) == {"run here"}


def test_importing_twice_is_refused_the_second_time(honest, tmp_path, capsys):
    db = tmp_path / "x.duckdb"
    assert bench_main(["import", str(honest), "--db", str(db)]) == 0
    before = store_state(db)
    refused(capsys, ["import", str(honest), "--db", str(db)], "is already in the store")
    assert store_state(db) == before


KILL = """
import os, sys
from negguide.bench import submit as s
from negguide.results.store import Store
s.SUITES["tiny-test"] = s.Suite("tiny-test", "1", "", (s.SuiteEntry("gmm1d-remove-1", "quick", (0.05,), 256, 50),))
original = Store.write_import
def write_import(self, records, calibrations):
    if sys.argv[3] == "after":
        original(self, records, calibrations)
    os._exit(9)
Store.write_import = write_import
s.import_bundle(sys.argv[1], Store(sys.argv[2]))
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_during_import_leaves_nothing_or_everything_after_the_next_open(when, honest, tmp_path, local_store):
    before = store_state(local_store)
    done = subprocess.run([sys.executable, "-c", KILL, str(honest), str(local_store), when], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    assert [p for p in (tmp_path / "artifacts").iterdir() if p.name.startswith(".import-")]
    Store(local_store).check(writing=True)  # the next open recovers
    runs, calibrations, artifacts = store_state(local_store)
    assert not [name for name in artifacts if name.startswith(".import-")]
    if when == "before":
        assert (runs, calibrations, artifacts) == before
    else:
        manifest, _ = members_of(honest)
        ids = {run["run_id"] for run in manifest["runs"]}
        assert ids <= set(runs) and ids <= set(artifacts) and len(calibrations) == 1
        assert all((tmp_path / "artifacts" / run_id / "samples.npz").is_file() for run_id in ids)


def test_import_rejudges_and_recomputes_the_calibration(honest, tmp_path, capsys):
    db = tmp_path / "x.duckdb"
    assert bench_main(["import", str(honest), "--db", str(db)]) == 0
    manifest, _ = members_of(honest)
    calibration = Store(db).calibrations().iloc[0]
    points = json.loads(calibration.points)
    meeting = [p for p in points if p["interval"][1] <= 0.05]  # the upper 95% bound meets the target (one rule everywhere)
    assert calibration.scale == min(p["scale"] for p in meeting) and {p["run_id"] for p in points} == set(manifest["calibrations"][0]["points"])
    run = Store(db).runs().iloc[0]
    records = np.load(Path(run.artifacts_dir) / "records.npz")
    assert set(records.files) == {"label", "x"} and run.provenance == "self-reported" and run.submitter == "tester"


# ---- verify: unpredictable, with stated power -------------------------------------------

def test_verify_states_its_seed_and_power_and_marks_what_it_checked(honest, tmp_path, capsys):
    db = tmp_path / "x.duckdb"
    assert bench_main(["import", str(honest), "--db", str(db)]) == 0
    capsys.readouterr()
    assert bench_main(["verify", str(honest), "--db", str(db), "--samples", "40"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("verify now runs the method file") and "seed " in first
    assert "40 of 256 samples re-drawn" in out and "caught with 95% probability" in out
    seed = int(first.split("--seed ")[1].split()[0])
    checks = Store(db).verifications(Store(db).runs().run_id.iloc[0])
    assert checks.seed.tolist() == [str(seed)] and checks.checked.tolist() == [40]
    assert set(Store(db).runs().provenance) == {"verified"}


def test_the_samples_checked_change_with_the_seed_and_the_power_is_as_stated():
    total, checked, forged_share = 4096, 300, 0.01
    forged = np.random.default_rng(123).choice(total, size=int(forged_share * total), replace=False)
    caught = np.mean([np.isin(choose_ids(seed, "abc", total, checked), forged).any() for seed in range(400)])
    assert detectable_share(total, checked) <= forged_share
    assert caught >= 0.93  # 95% in expectation; 400 trials
    assert not np.array_equal(choose_ids(1, "abc", total, checked), choose_ids(2, "abc", total, checked))
    assert detectable_share(total, total) == 1 / total


def test_a_forgery_of_one_percent_of_the_samples_is_imported_but_caught_by_verify(honest, tmp_path, capsys):
    """Replace 1% of one run's samples outside the old fixed choice (shards of default_rng(0)), recompute its metrics with the harness."""
    from negguide.bench.run.shards import pick_device, runtime_for
    from negguide.bench.submit import _judge_samples
    from negguide.bench.tasks import get_task

    manifest, members = members_of(honest)
    run = manifest["runs"][0]
    x = arrays_of(members[run["files"]["samples"]["path"]])["x"]
    traces = arrays_of(members[run["files"]["traces"]["path"]])
    forged = np.random.default_rng(7).choice(np.arange(64, 256), size=3, replace=False)  # 3 of 256: 1.2%
    x[forged] = np.abs(x[forged]) + 3.0  # moved into an allowed mode
    set_member(manifest, members, run, "samples", npz(x=x))
    task = get_task("gmm1d-remove-1")
    judgement = _judge_samples(task, runtime_for(task, pick_device(task)), x, {k: v for k, v in traces.items() if k != "t"},
                               tuple(run["config"]["metrics"]), "forgery")
    run["metrics"] = {m.name: {"value": m.value, "low": m.low, "high": m.high, "interval": m.interval, "samples": m.samples}
                      for m in judgement.metrics}
    forgery = write_zip(tmp_path / "forged.zip", manifest, members)
    db = tmp_path / "x.duckdb"
    assert bench_main(["import", str(forgery), "--db", str(db)]) == 0  # the samples are judged here: a consistent forgery imports
    checked = 230  # the size that catches 1% of 256 samples with 95% probability
    assert detectable_share(256, checked) <= 0.012
    seeds = [s for s in range(100) if np.isin(choose_ids(s, run["run_id"], 256, checked), forged).any()]
    assert len(seeds) >= 93
    err = refused(capsys, ["verify", str(forgery), "--db", str(db), "--samples", str(checked), "--seed", str(seeds[0])], "differ from the bundle's")
    assert str(run["run_id"]) in err
    assert set(Store(db).runs().provenance) == {"self-reported"}


# ---- the CLI holes ----------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--seed", str(2**63)], "--seed must be between 0 and 2**63-1"),
    (["--seed", "-1"], "--seed must be between 0 and 2**63-1"),
    (["--device", "garbage"], "--device 'garbage' is not a device"),
    (["--samples", "1000000000", "--steps", "1"], "would hold about"),
])
def test_run_input_holes_fail_before_any_work(args, message, tmp_path, capsys):
    db = tmp_path / "x.duckdb"
    refused(capsys, ["run", "--method", "np", "--task", "gmm1d-remove-1", "--steps", "5", "--samples", "8", *args, "--db", str(db),
                     "--no-progress", "--no-baseline"], message)
    assert not db.exists() and not (tmp_path / "artifacts").exists()


def test_a_cuda_device_without_a_gpu_is_refused_even_for_a_stored_run(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    db = tmp_path / "x.duckdb"
    args = ["run", "--method", "np", "--task", "gmm1d-remove-1", "--steps", "5", "--samples", "8", "--db", str(db), "--no-progress", "--no-baseline"]
    assert bench_main(args) == 0
    refused(capsys, [*args, "--device", "cuda"], "no CUDA GPU is available")


def test_submit_checks_out_before_any_run(tmp_path, capsys):
    refused(capsys, ["submit", f"{EXAMPLE}:DecayingNP", "--suite", "mnist", "--out", str(tmp_path), "--db", str(tmp_path / "x.duckdb")], "is a folder")
    assert not (tmp_path / "x.duckdb").exists()


@pytest.mark.parametrize("body, message", [
    ("import sys\nsys.exit(0)\n", "it raised SystemExit"),
    ("raise KeyboardInterrupt\n", "it raised KeyboardInterrupt"),
    ("from negguide.methods.negative_prompting import NegativePrompting\nclass Mine(NegativePrompting):\n    name = 'np'\n",
     "a built-in method's name"),
])
def test_a_method_file_that_exits_interrupts_or_takes_a_builtin_name_is_named(body, message, tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text(body)
    refused(capsys, ["run", "--method", f"{path}:Mine", "--task", "gmm1d-remove-1", "--steps", "5", "--samples", "8",
                     "--db", str(tmp_path / "x.duckdb"), "--no-progress", "--no-baseline"], message)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_artifacts_folder_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts").chmod(0o500)
    try:
        refused(capsys, ["run", "--method", "np", "--task", "gmm1d-remove-1", "--steps", "5", "--samples", "8",
                         "--db", str(tmp_path / "x.duckdb"), "--no-progress", "--no-baseline"], "not a writable folder")
    finally:
        (tmp_path / "artifacts").chmod(0o700)


def test_ctrl_c_during_import_stores_nothing_and_says_so(honest, tmp_path, local_store, capsys, monkeypatch):
    def interrupted(self, records, calibrations):
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "write_import", interrupted)
    before = store_state(local_store)
    capsys.readouterr()
    assert bench_main(["import", str(honest), "--db", str(local_store)]) == 130
    err = capsys.readouterr().err
    assert "import interrupted" in err and "shards" not in err
    assert store_state(local_store) == before


def test_verify_all_redraws_every_sample(honest, tmp_path, capsys):
    db = tmp_path / "x.duckdb"
    assert bench_main(["import", str(honest), "--db", str(db)]) == 0
    capsys.readouterr()
    assert bench_main(["verify", str(honest), "--db", str(db), "--all", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert all(run["checked"] == run["samples"] == 256 and run["detects_share"] == 1 / 256 for run in result["runs"])


def test_import_refuses_a_local_artifacts_folder_of_the_same_id_and_leaves_it(honest, tmp_path, local_store, capsys):
    manifest, _ = members_of(honest)
    shard = tmp_path / "artifacts" / manifest["runs"][0]["run_id"] / "shards" / "000000000-000000064.npz"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"a shard of an interrupted local run")
    before = store_state(local_store)
    refused(capsys, ["import", str(honest), "--db", str(local_store)], "import never touches local artifacts")
    assert store_state(local_store) == before and shard.read_bytes() == b"a shard of an interrupted local run"


def test_an_immutable_artifacts_folder_is_refused_before_any_work(tmp_path, capsys):
    folder = tmp_path / "artifacts"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not allowed here")
    try:
        refused(capsys, ["run", "--method", "np", "--task", "gmm1d-remove-1", "--steps", "5", "--samples", "8",
                         "--db", str(tmp_path / "x.duckdb"), "--no-progress", "--no-baseline"], "not a writable folder")
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


def test_a_method_calling_exit_while_drawing_is_named(tmp_path, capsys):
    path = tmp_path / "quits.py"
    path.write_text("import sys\nfrom negguide.methods.negative_prompting import NegativePrompting\n"
                    "class Quits(NegativePrompting):\n    name = 'quits'\n    def guide(self, step, preds, state):\n        sys.exit(0)\n")
    capsys.readouterr()
    assert bench_main(["run", "--method", f"{path}:Quits", "--task", "gmm1d-remove-1", "--steps", "5", "--samples", "8",
                       "--db", str(tmp_path / "x.duckdb"), "--no-progress", "--no-baseline"]) == 2
    assert "method 'quits' called exit(0) while drawing" in capsys.readouterr().err
