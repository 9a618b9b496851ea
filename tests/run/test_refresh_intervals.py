"""Refreshing a store's intervals from the per-sample records (results/refresh.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from negguide.bench.run import RunRequest, resolve, run_one
from negguide.bench.run.compare import run_statistics, compare_runs
from negguide.results.refresh import refresh_intervals
from negguide.results.store import Store


@pytest.fixture
def store_with_two_runs(tmp_path) -> tuple[Store, list[str]]:
    """Two small gmm1d runs on the same noise, compared; then their stored intervals spoiled as an old method might have left them."""
    store = Store(tmp_path / "bench.duckdb")
    ids = [run_one(resolve(RunRequest(task="gmm1d-remove-1", method="np", params={"scale": s}, samples=96, steps=20)), store,
                   progress=False).run_id for s in ("0.5", "2")]
    store.write_comparison(*ids, [row.as_dict() for row in compare_runs(store, *ids)])
    store._transaction(lambda con: (con.execute("UPDATE metrics SET low = value + 1, high = value + 2, interval = 'bootstrap-percentile-200'"),
                                    con.execute("UPDATE comparisons SET diff_low = 5, diff_high = 6, interval = 'old'")))
    return store, ids


def test_refresh_restores_every_interval_from_the_records(store_with_two_runs):
    store, ids = store_with_two_runs
    done = refresh_intervals(store, run_statistics)
    metrics = store.metrics(ids)
    assert done.metrics == len(metrics) and not done.skipped and not done.mismatched
    assert ((metrics.low <= metrics.value) & (metrics.value <= metrics.high)).all()  # every interval contains its estimate again
    methods = dict(zip(metrics.name, metrics.interval))
    assert methods["wasserstein"] == "bootstrap-percentile-or-basic-200" and methods["forbidden_rate"] == "wilson"
    assert methods["kl_classes"] == "bootstrap-basic-hull-1000"
    comparisons = store.comparison(*ids)
    assert done.comparisons == len(comparisons) > 0
    assert ((comparisons.diff_low <= comparisons["diff"]) & (comparisons["diff"] <= comparisons.diff_high)).all()
    assert dict(zip(comparisons.metric, comparisons.interval))["wasserstein"] == "paired-bootstrap-percentile-or-basic-200"
    again = refresh_intervals(store, run_statistics)  # a second refresh changes nothing: the intervals are a function of the records
    assert store.metrics(ids).equals(metrics) and again.metrics == done.metrics


def test_a_run_without_records_is_skipped_with_the_reason(store_with_two_runs):
    store, ids = store_with_two_runs
    folder = Path(store.runs().set_index("run_id").loc[ids[0], "artifacts_dir"])
    (folder / "records.npz").unlink()
    done = refresh_intervals(store, run_statistics)
    assert list(done.skipped) == [ids[0]] and "no per-sample records" in done.skipped[ids[0]]
    assert done.comparisons == 0  # a comparison needs both runs' records
    kept = store.metrics([ids[0]])
    assert (kept.interval == "bootstrap-percentile-200").all()  # left as it was
    assert "skipped " + ids[0] in done.summary()


def test_the_cli_refreshes_a_store(db, capsys):
    from negguide.bench.cli import main as bench_main

    assert bench_main(["run", "--method", "np", "--task", "gmm1d-remove-1", "--samples", "64", "--steps", "10", "--no-progress"]) == 0
    capsys.readouterr()
    assert bench_main(["refresh-intervals"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("refreshed ") and "paired comparison" in out
