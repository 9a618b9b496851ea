"""The Streamlit dashboard on a store of real small runs: every page, the filters, the ranking, an empty store."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from negguide.bench.cli import main as bench_main
from negguide.dashboard import data
from negguide.dashboard.launch import streamlit_command
from negguide.results.artifacts import image_grid_png, write_bytes_atomic, write_npz_atomic
from negguide.results.leaderboard import headline_of
from negguide.results.store import RunRecord, Store

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
GMM1D, GMM2D = "gmm1d-remove-1", "gmm2d-remove-0"
IMAGES = "toy-images-remove-3"  # not a registered task: image pages must work from the store alone
QUICK = ["--samples", "256", "--steps", "50", "--no-progress"]


def _write_image_run(store: Store, method: str, images: np.ndarray) -> None:
    """An image-task run written the way the runner writes one (for the grid and paired-grid paths)."""
    run_id = f"toyimages-{method}"
    folder = store.path.parent / "artifacts" / run_id
    write_npz_atomic(folder / "samples.npz", x=images)
    write_bytes_atomic(folder / "grid.png", image_grid_png(images))
    now = time.time()
    counts = np.bincount(np.arange(len(images)) % 10, minlength=10)
    store.write_run(RunRecord(
        run_id=run_id, task=IMAGES, task_version="1", method=method, params={"scale": 1.0}, profile="quick", seed=0,
        samples=len(images), steps=10, config={"task": IMAGES}, git_commit=None, packages={}, timings={},
        started_at=now - 1, finished_at=now, artifacts_dir=str(folder),
        metrics=[{"name": "forbidden_rate", "value": 0.0 if method == "dng" else 0.1, "higher_is_better": False, "samples": len(images)},
                 {"name": "fid", "value": 10.0, "higher_is_better": False, "samples": len(images)}],
        traces={"guidance_scale": {"t": [0, 500, 999], **{q: [0.0, 1.0, 2.0] for q in ("mean", "q05", "q25", "q50", "q75", "q95")}}},
        class_counts=counts.tolist(),
    ))


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """Real small runs of NP, DNG, the exact-posterior DNG and unguided sampling on two exact tasks."""
    path = tmp_path_factory.mktemp("dashboard") / "bench.duckdb"
    commands = [
        ["run", "--method", "none", "--task", GMM1D],
        ["sweep", "--method", "np", "--task", GMM1D, "--param", "scale=0.5,3"],
        ["sweep", "--method", "dng", "--task", GMM1D, "--param", "scale=2,8"],
        ["run", "--method", "dng-exact", "--task", GMM1D, "--param", "scale=4"],
        ["run", "--method", "none", "--task", GMM2D],
        ["run", "--method", "dng", "--task", GMM2D],
    ]
    for command in commands:
        assert bench_main([*command, "--db", str(path), *QUICK]) == 0
    store = Store(path)
    images = np.random.default_rng(0).integers(0, 256, size=(16, 1, 8, 8), dtype=np.uint8)
    _write_image_run(store, "none", images)
    guided = images.copy()
    guided[:5] = 255 - guided[:5]  # five images changed by "guidance"
    _write_image_run(store, "dng", guided)
    return path


@pytest.fixture
def app(store_path, monkeypatch):
    """A fresh AppTest on the filled store (the app reads BENCH_DB)."""
    monkeypatch.setenv("BENCH_DB", str(store_path))
    return lambda: AppTest.from_file(APP, default_timeout=120)


def _no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.warning, [w.value for w in at.warning]


def _table(at: AppTest) -> pd.DataFrame:
    return at.dataframe[0].value  # the leaderboard page has one table


def test_leaderboard_is_ranked_by_the_headline(app, store_path):
    at = app().run()
    _no_errors(at)
    assert at.sidebar.selectbox(key="task").value == GMM1D  # tasks in name order
    quality, threshold = headline_of(Store(store_path), GMM1D)
    assert quality == "wasserstein"
    table = _table(at)
    assert table["rank"].iloc[0] == 1 and table["rank"].is_monotonic_increasing  # shared ranks where intervals overlap
    assert set(table.method) == {"none", "np", "dng", "dng-exact"} and len(table) == 6
    assert {"forbidden_rate", "kl_classes", quality, "posterior_mae", "samples", "protocol", "date", "commit"} <= set(table.columns)
    assert all("[" in text for text in table[quality])  # every value with its 95% interval
    for column in ("forbidden_rate", "kl_classes", quality):  # "value [low, high]" -> value
        table[column] = table[column].map(lambda text: float(text.split(" ")[0]))
    safe = table[table.safe]
    assert not safe.empty, "the fixture should contain a safe run"
    # Rank 1 is the safe run with the best quality; safe runs come first, best quality first; then the safest.
    assert table.iloc[0].run_id == safe.sort_values(quality).iloc[0].run_id
    assert list(table.safe) == sorted(table.safe, reverse=True)
    assert safe[quality].is_monotonic_increasing
    assert table[~table.safe].forbidden_rate.is_monotonic_increasing
    assert any("How this table is ranked" in m.value and f"{threshold:.1%}" in m.value for m in at.markdown)


def test_filters_narrow_the_table(app):
    at = app().run()
    full = _table(at)
    at.sidebar.multiselect(key="methods").set_value(["dng"]).run()
    _no_errors(at)
    only_dng = _table(at)
    assert set(only_dng.method) == {"dng"} and len(only_dng) == 2
    assert only_dng["rank"].iloc[0] == 1 and len(full) == 6  # ranked among the runs shown
    at.sidebar.multiselect(key="protocols").set_value(["exploratory"]).run()
    assert len(_table(at)) == 2
    at.sidebar.multiselect(key="methods").set_value(["np", "dng"]).run()
    assert set(_table(at).method) == {"np", "dng"}
    at.sidebar.selectbox(key="task").set_value(GMM2D).run()  # that task has no np run: the filter keeps dng only
    _no_errors(at)
    assert at.sidebar.multiselect(key="methods").value == ["dng"]
    assert set(_table(at).method) == {"dng"}


@pytest.mark.parametrize("task", [GMM1D, GMM2D, IMAGES])
def test_every_page_renders(app, task):
    at = app().run()
    at.sidebar.selectbox(key="task").set_value(task).run()
    for page in ("Leaderboard", "Curves", "Run detail", "Compare"):
        at.sidebar.radio(key="page").set_value(page).run()
        _no_errors(at)
        assert at.header[0].value.endswith(task), page


def test_run_detail_shows_histogram_and_traces(app, store_path):
    tracked = Store(store_path).wide(GMM1D).query("method == 'dng'").run_id.iloc[0]
    at = app()
    at.query_params["page"] = "Run detail"
    at.query_params["task"] = GMM1D
    at.query_params["run"] = tracked
    at.run()
    _no_errors(at)
    assert at.selectbox(key="run").value == tracked  # a link opens the run it names
    subheaders = {s.value for s in at.subheader}
    assert {"Samples", "Class histogram", "Guidance scale over the steps", "Posterior of the removed class"} <= subheaders


def test_compare_pairs_images_on_the_same_seeds(app):
    at = app()
    at.query_params["page"] = "Compare"
    at.query_params["task"] = IMAGES
    at.run()
    _no_errors(at)
    assert (at.selectbox(key="run_a").value, at.selectbox(key="run_b").value) == ("toyimages-none", "toyimages-dng")
    assert any("5 of 16" in m.value for m in at.markdown)


def test_empty_store_shows_the_first_run_page(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_DB", str(tmp_path / "absent.duckdb"))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    assert any(data.FIRST_RUN_COMMAND in c.value for c in at.code)
    assert not at.sidebar.radio  # no pages to navigate yet


def test_unreadable_store_shows_a_notice_not_a_crash(tmp_path, monkeypatch):
    def busy(self, task=None):
        raise RuntimeError("Could not set lock on file")

    monkeypatch.setattr(Store, "wide", busy)
    monkeypatch.setenv("BENCH_DB", str(tmp_path / "busy.duckdb"))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    assert "could not be read" in at.warning[0].value


def test_run_fields_match_the_store(store_path):
    assert tuple(Store(store_path).runs().columns) == data.RUN_FIELDS


def test_pure_helpers():
    assert data.resolve_db_path(["--db", "x.duckdb"], {"BENCH_DB": "y"}) == Path("x.duckdb")
    assert data.resolve_db_path(["-q"], {"BENCH_DB": "y"}) == Path("y")
    assert data.shown_path(Path("/srv/x/bench-data/bench.duckdb"), Path("/srv/x")) == "bench-data/bench.duckdb"
    assert data.db_option("bench-data/bench.duckdb") == "" and data.db_option("/elsewhere.duckdb") == " --db /elsewhere.duckdb"
    np.testing.assert_allclose(data.ideal_shares(4, 1), [1 / 3, 0, 1 / 3, 1 / 3])
    np.testing.assert_allclose(data.ideal_shares(3, 0, [0.5, 0.25, 0.25]), [0, 0.5, 0.5])
    defaults = {"scale": 5.0, "prior": 0.25, "tau": 0.25}
    assert data.setting_label("dng", {"scale": 5.0, "prior": 0.1, "tau": 0.25}, defaults) == "scale=5, prior=0.1"
    assert data.setting_label("none", {"scale": 1.0}, {}) == "unguided"
    a = np.zeros((3, 1, 4, 4), dtype=np.uint8)
    b = a.copy()
    b[1] = 200
    changed = data.changed_images(a, b)
    assert changed.tolist() == [False, True, False]
    frames = data.framed(b, changed)
    assert frames.shape == (3, 3, 8, 8) and frames[1, :, 0, 0].tolist() == [255, 0, 0] and frames[0, :, 0, 0].tolist() == [255] * 3


def test_launch_command_passes_the_store():
    command = streamlit_command(Path("/data/bench.duckdb"), 8600, "127.0.0.1")
    assert command[command.index("--server.port") + 1] == "8600"
    assert command[command.index("--server.headless") + 1] == "true"
    assert command[command.index("--browser.gatherUsageStats") + 1] == "false"
    assert command[-3:] == ["--", "--db", "/data/bench.duckdb"]


def test_methods_page_lists_cards_with_provenance(app):
    at = app().run()
    at.sidebar.radio(key="page").set_value("Methods").run()
    _no_errors(at)
    cards = at.dataframe[0].value
    assert {"none", "np", "dng", "dng-exact"} <= set(cards.method)
    dng = cards[cards.method == "dng"].iloc[0]
    assert dng["run here"] >= 1 and dng["self-reported"] == 0 and "prior=0.25" in dng["defaults"]
    assert dng["predictions per step"] == "uncond, neg"
