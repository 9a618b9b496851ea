"""Sharded sampling on a real local Ray cluster: same numbers as in-process, resume, one writer."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from conftest import run_json  # noqa: E402

from negguide.bench.cli import main as bench_main  # noqa: E402
from negguide.bench.run import RunRequest, expand_sweep, resolve, resolve_all, run_all, run_one  # noqa: E402
from negguide.bench.run.ray import RayExecutor  # noqa: E402
from negguide.methods.errors import BenchError  # noqa: E402
from negguide.results.store import Store  # noqa: E402

pytestmark = pytest.mark.ray

# 8 shards of 64 samples; each shard takes a fraction of a second, so a kill lands between shards.
CASE = ["--method", "dng", "--task", "gmm1d-remove-1", "--samples", "512", "--steps", "200", "--batch-size", "64"]
QUICK = ["--task", "gmm1d-remove-1", "--samples", "256", "--steps", "50"]


@pytest.fixture(scope="module")
def cluster():
    """A local 2-worker Ray cluster in this process; `--workers N` runs below join it."""
    if ray.is_initialized():
        pytest.skip("another Ray connection is open in this process")
    try:
        executor = RayExecutor(workers=2, address=None)
    except BenchError:  # Ray gives its processes 30 s to start; a busy machine gets one more try
        executor = RayExecutor(workers=2, address=None)
    yield ray.get_runtime_context().gcs_address
    executor.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """CASE drawn in-process, unbroken: the numbers every other mode must reproduce."""
    store = Store(tmp_path_factory.mktemp("reference") / "bench.duckdb")
    request = RunRequest(task="gmm1d-remove-1", method="dng", samples=512, steps=200, batch_size=64)
    out = run_one(resolve(request), store, progress=False).result
    return {**out, "x": _samples(out)}


def _cli(*args: str) -> dict:
    """`bench run ... --json` in a fresh process; the parsed result."""
    done = subprocess.run([sys.executable, "-m", "negguide.bench.cli", "run", *args, "--json", "--no-progress", "--no-baseline"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _samples(result: dict) -> np.ndarray:
    return np.load(Path(result["artifacts_dir"]) / "samples.npz")["x"]


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers must be >= 1, got 0"),
    (["--ray-address", "127.0.0.1:1"], "could not reach Ray cluster at 127.0.0.1:1"),
])
def test_bad_cluster_options_are_one_line_exit_2(args, message, capsys, tmp_path):
    started = time.monotonic()
    assert bench_main(["run", "--method", "dng", *QUICK, "--db", str(tmp_path / "bench.duckdb"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert time.monotonic() - started < 20 and not (tmp_path / "bench.duckdb").exists()


def test_same_samples_in_process_and_on_one_or_two_workers(cluster, reference, capsys, tmp_path):
    two = run_json(capsys, *CASE, "--db", str(tmp_path / "two" / "bench.duckdb"), "--workers", "2")
    # A second driver joining the running cluster by address, one shard in flight at a time.
    one = _cli(*CASE, "--db", str(tmp_path / "one" / "bench.duckdb"), "--ray-address", cluster, "--workers", "1")
    for result in (one, two):
        assert result["run_id"] == reference["run_id"] and result["metrics"] == reference["metrics"]
        assert result["shards_total"] == 8 and result["shards_resumed"] == 0
        assert np.array_equal(_samples(result), reference["x"])


def test_killed_run_resumes_with_the_missing_shards_only(cluster, reference, capsys, tmp_path):
    db = tmp_path / "bench.duckdb"
    shards = tmp_path / "artifacts" / reference["run_id"] / "shards"
    proc = subprocess.Popen([sys.executable, "-m", "negguide.bench.cli", "run", *CASE, "--db", str(db), "--json", "--no-progress", "--no-baseline"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(shards.glob("*.npz")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = len(list(shards.glob("*.npz")))
    assert 1 <= saved < 8, f"{saved} shards saved before the kill"
    resumed = run_json(capsys, *CASE, "--db", str(db), "--workers", "2")
    assert resumed["shards_total"] == 8 and 1 <= resumed["shards_resumed"] < 8
    assert resumed["metrics"] == reference["metrics"] and np.array_equal(_samples(resumed), reference["x"])


def _descendants(root: int) -> list[int]:
    """Process ids below `root` (this test's own Ray processes), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _kill_first_shard_worker(killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first Ray worker seen drawing a shard (its title is `ray::_shard_task`)."""
    while not killed and not stop.is_set():
        for pid in _descendants(os.getpid()):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"_shard_task" in title:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.05)


def test_shard_of_a_dead_worker_is_retried(cluster, reference, tmp_path):
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_shard_worker, args=(killed, stop), daemon=True)
    executor = RayExecutor(workers=2, address=None)
    killer.start()
    try:
        request = RunRequest(task="gmm1d-remove-1", method="dng", samples=512, steps=200, batch_size=64)
        result = run_one(resolve(request), Store(tmp_path / "bench.duckdb"), executor, progress=False).result
    finally:
        stop.set()
        executor.close()
        killer.join()
    assert killed, "no shard worker was seen"
    assert result["metrics"] == reference["metrics"] and np.array_equal(_samples(result), reference["x"])


def test_truncated_shard_is_recomputed_not_trusted(cluster, reference, capsys, tmp_path):
    shards = tmp_path / "artifacts" / reference["run_id"] / "shards"
    shutil.copytree(Path(reference["artifacts_dir"]) / "shards", shards)
    victim = sorted(shards.glob("*.npz"))[3]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.warns(UserWarning, match="truncated or corrupt"):
        result = run_json(capsys, *CASE, "--db", str(tmp_path / "bench.duckdb"), "--workers", "2")
    assert result["shards_resumed"] == 7 and np.array_equal(_samples(result), reference["x"])


def test_two_processes_share_one_database(tmp_path):
    db = tmp_path / "bench.duckdb"
    procs = [subprocess.Popen([sys.executable, "-m", "negguide.bench.cli", "run", "--method", method, *QUICK, "--db", str(db), "--json", "--no-progress", "--no-baseline"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for method in ("dng", "np")]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outputs]
    store = Store(db)
    assert sorted(store.runs().method) == ["dng", "np"]
    assert set(store.metrics().run_id) == set(store.runs().run_id)


def test_sweep_points_share_the_cluster(cluster, tmp_path):
    base = RunRequest(task="gmm1d-remove-1", method="dng", samples=256, steps=50, batch_size=64)
    points = resolve_all(expand_sweep(base, {"scale": ["1", "3"]}))
    ray_store, local_store = Store(tmp_path / "ray" / "bench.duckdb"), Store(tmp_path / "local" / "bench.duckdb")
    run_one(points[0], ray_store, progress=False)  # stored already: the sweep reuses it
    executor = RayExecutor(workers=2, address=None)
    try:
        on_ray = run_all(points, ray_store, executor, progress=False)
    finally:
        executor.close()
    assert ray.is_initialized(), "closing a reused connection must leave the cluster running"
    local = run_all(points, local_store, None, progress=False)
    assert [o.reused for o in on_ray] == [True, False] and [o.reused for o in local] == [False, False]
    assert [o.result["metrics"] for o in on_ray] == [o.result["metrics"] for o in local]
    assert on_ray[1].result["shards_total"] == 4 and len(ray_store.runs()) == 2


def test_method_error_on_a_worker_is_one_line(cluster, capsys, tmp_path):
    assert bench_main(["run", "--method", "np", *QUICK, "--param", "scale=1e308", "--db", str(tmp_path / "b.duckdb"), "--workers", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "produced NaN or inf at step" in err and err.count("\n") == 1 and "Traceback" not in err
