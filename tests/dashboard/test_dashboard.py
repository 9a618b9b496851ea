"""The Streamlit dashboard on a store of real small runs: every page, the filters, the ranking, an empty store."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from negguide.dashboard import data
from negguide.dashboard.launch import streamlit_command
from negguide.results.leaderboard import headline_of
from negguide.results.store import Store

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
GMM1D, GMM2D = "gmm1d-remove-1", "gmm2d-remove-0"  # as in conftest.py's store
IMAGES = "toy-images-remove-3"


@pytest.fixture
def app(store_path, monkeypatch):
    """A fresh AppTest on the filled store (the app reads BENCH_DB)."""
    monkeypatch.setenv("BENCH_DB", str(store_path))
    return lambda: AppTest.from_file(APP, default_timeout=120)


def _no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.warning, [w.value for w in at.warning]


def _runs_table(at: AppTest) -> pd.DataFrame:
    """The leaderboard's table of every run (the one with a `safe` column; the matched-safety tables come first)."""
    return next(d.value for d in at.dataframe if "safe" in d.value.columns)


def _open(app, **query: str) -> AppTest:
    at = app()
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def test_leaderboard_is_ranked_by_the_headline(app, store_path):
    at = _open(app, page="Leaderboard")
    _no_errors(at)
    assert at.sidebar.selectbox(key="task").value == GMM1D  # tasks in name order
    quality, threshold = headline_of(Store(store_path), GMM1D)
    assert quality == "wasserstein"
    table = _runs_table(at)
    stored = Store(store_path).wide(GMM1D)
    assert set(table.method) == {"none", "np", "dng", "dng-exact"} and len(table) == len(stored)
    bounds = [data.rank_bounds(r) for r in table["rank"]]
    assert bounds[0][0] == 1 and bounds == sorted(bounds)  # rank groups "1", "2-5", in order, never "1.0"
    assert all(r.replace("-", "").isdigit() for r in table["rank"])
    assert {"forbidden_rate", "kl_classes", quality, "run"} <= set(table.columns) and "date" not in table.columns  # the run page has it
    # the task's other metrics: a second table, same rows in the same order (one table with all would not fit a window)
    others = next(d.value for d in at.dataframe if "posterior_mae" in d.value.columns)
    assert "posterior_mae" not in table.columns and list(others.method) == list(table.method) and list(others["rank"]) == list(table["rank"])
    assert any("Every run: samples 256; steps 50" in m.value for m in at.markdown)  # constant columns said once, not repeated
    assert all("[" in text for text in table[quality])  # every value with its 95% interval
    for column in ("forbidden_rate", "kl_classes", quality):  # "value [low, high]" -> value
        table[column] = table[column].map(lambda text: float(text.split(" ")[0]))
    safe = table[table.safe]
    assert not safe.empty, "the fixture should contain a safe run"
    # Rank 1 is the safe run with the best quality; safe runs come first, best quality first; then the safest.
    assert table.iloc[0].run == data.run_link(GMM1D, stored.set_index("run_id").loc[[data.parse_run_link(r) for r in safe.run]]
                                              .sort_values(quality).index[0])
    assert list(table.safe) == sorted(table.safe, reverse=True)
    assert safe[quality].is_monotonic_increasing
    assert table[~table.safe].forbidden_rate.is_monotonic_increasing
    assert any("How this table is ranked" in m.value and f"{threshold:.1%}" in m.value for m in at.markdown)


def test_filters_narrow_the_table(app, store_path):
    at = _open(app, page="Leaderboard")
    full = _runs_table(at)
    at.sidebar.multiselect(key="methods").set_value(["dng"]).run()
    _no_errors(at)
    only_dng = _runs_table(at)
    stored = Store(store_path).wide(GMM1D)
    assert set(only_dng.method) == {"dng"} and len(only_dng) == int((stored.method == "dng").sum())
    assert data.rank_bounds(only_dng["rank"].iloc[0])[0] == 1 and len(full) == len(stored)  # ranked among the runs shown
    at.sidebar.multiselect(key="methods").set_value(["np", "dng"]).run()
    assert set(_runs_table(at).method) == {"np", "dng"}
    at.sidebar.selectbox(key="task").set_value(GMM2D).run()  # the filter keeps the methods that task has
    _no_errors(at)
    assert set(_runs_table(at).method) <= {"np", "dng"}


@pytest.mark.parametrize("task", [GMM1D, GMM2D, IMAGES])
def test_every_page_renders(app, task):
    at = app().run()
    at.sidebar.selectbox(key="task").set_value(task).run()
    for page in ("Leaderboard", "Curves", "Run detail", "Compare"):
        at.sidebar.radio(key="page").set_value(page).run()
        _no_errors(at)
        assert at.header[0].value.endswith(task), page
        _no_missing_cells(at)


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
    at = _open(app, page="Overview")
    at.sidebar.radio(key="page").set_value("Methods").run()
    _no_errors(at)
    cards = at.dataframe[0].value
    assert {"none", "np", "dng", "dng-exact"} <= set(cards.method)
    dng = cards[cards.method == "dng"].iloc[0]
    assert dng["run here"] >= 1 and dng["self-reported"] == 0 and "prior=0.25" in dng["defaults"]
    assert dng["predictions per step"] == "uncond, neg"


# ---- the pages of issue 20: overview, targets, method page, links, downloads, clean cells ----

MISSING_TEXT = {"nan", "NaN", "None", "<NA>", "NaT"}


def _no_missing_cells(at: AppTest) -> None:
    """No displayed table has a NaN/None cell (missing values read as data.MISSING)."""
    for frame in (d.value for d in at.dataframe):
        bad = [(column, value) for column in frame.columns for value in frame[column] if value is None or str(value) in MISSING_TEXT]
        assert not bad, f"missing cells in {list(frame.columns)}: {bad[:3]}"


def _downloads_per_table(at: AppTest) -> None:
    """Every table has a CSV and a JSON download."""
    labels = [b.label for b in at.get("download_button")]
    assert labels.count("CSV") == labels.count("JSON") == len(at.dataframe), labels


def test_overview_across_tasks(app):
    at = app().run()  # the first page a reader sees
    _no_errors(at)
    assert at.header[0].value.startswith("Overview")
    target = at.selectbox(key="target")
    assert target.options == ["at most 5%", "at most 2%"]  # 5% is calibrated on both tasks, so it comes first
    summary, grid = at.dataframe[0].value, at.dataframe[1].value
    assert set(summary.method) == {"np", "dng"} and list(summary.columns) == ["method", "tasks", "mean rank", "win rate", "page"]
    assert all(text.endswith("%") for text in summary["win rate"]) and set(summary.tasks) == {2}
    assert summary.page.iloc[0] == data.method_link(summary.method.iloc[0])  # each row links to its method page
    assert {f"{GMM1D} · wasserstein ↓", f"{GMM2D} · wasserstein ↓"} <= set(grid.columns)
    assert all("[" in cell and "#" in cell for cell in grid[f"{GMM1D} · wasserstein ↓"])  # value [95% CI] #rank group
    assert at.get("vega_lite_chart"), "the headline chart"
    _no_missing_cells(at)
    _downloads_per_table(at)
    target.set_value(0.02).run()
    assert set(at.dataframe[0].value.method) == {"np"}  # only NP is calibrated at 2%
    assert at.query_params["target"] == "0.02"


def test_target_selector_shows_every_calibrated_target(app):
    at = _open(app, page="Leaderboard", task=GMM1D, target="0.02")  # a link to one target opens it
    _no_errors(at)
    assert at.selectbox(key="target").value == 0.02
    matched = at.dataframe[0].value
    assert list(matched.method) == ["np"] and matched["rank"].iloc[0] == "1"
    glance = at.dataframe[1].value
    assert {"≤ 2%", "≤ 5%"} <= set(glance.columns) and set(glance.method) == {"np", "dng"}
    assert glance.set_index("method").loc["dng", "≤ 2%"] == data.MISSING  # not calibrated there: a dash, not NaN
    at.selectbox(key="target").set_value(0.05).run()
    assert set(at.dataframe[0].value.method) == {"np", "dng"}
    _no_missing_cells(at)
    _downloads_per_table(at)


def test_method_page_spans_tasks(app):
    at = _open(app, page="Method", method="dng")
    _no_errors(at)
    assert at.header[0].value == "Method · dng"
    headlines, runs = at.dataframe[0].value, at.dataframe[1].value
    assert set(headlines.task) == {GMM1D, GMM2D} and set(headlines.target) == {"≤ 5%"}
    assert all(r.endswith("of 2") for r in headlines["rank"])  # rank group among the methods calibrated there
    assert set(runs.task) == {GMM1D, GMM2D, IMAGES}
    _no_missing_cells(at)
    _downloads_per_table(at)
    assert at.query_params["method"] == "dng"


def test_unknown_task_in_the_url_says_so(app):
    at = _open(app, page="Leaderboard", task="gmm1d-remove-7")
    assert not at.exception
    assert "gmm1d-remove-7" in at.error[0].value and f"Did you mean **{GMM1D}**" in at.error[0].value
    assert not at.header  # no other task's leaderboard in its place
    assert at.query_params["task"] == "gmm1d-remove-7"
    at.sidebar.selectbox(key="task").set_value(GMM2D).run()  # choosing a task answers it
    assert not at.error and at.header[0].value.endswith(GMM2D)


def test_rows_link_to_their_run(app, store_path):
    at = _open(app, page="Leaderboard", task=GMM1D, target="0.05")
    link = at.dataframe[0].value.run.iloc[0]  # the matched-safety winner: a calibration run
    run_id = data.parse_run_link(link)
    assert run_id in set(Store(store_path).wide(GMM1D).run_id)
    at = _open(app, **{k: v[0] for k, v in parse_qs(link[1:]).items()})
    _no_errors(at)
    assert at.selectbox(key="run").value == run_id  # even when the protocol filter would hide it
    at = _open(app, page="Run detail", task=GMM1D, run=run_id[:6])  # a prefix works too
    assert at.selectbox(key="run").value == run_id
    at = _open(app, page="Run detail", task=GMM1D, run="zzzzzz")
    assert "zzzzzz" in at.error[0].value


def test_run_detail_provenance_has_no_nan(app, store_path):
    store = Store(store_path)
    unswept = store.wide(GMM1D).query("method == 'dng-exact'").run_id.iloc[0]  # a run outside any sweep
    at = _open(app, page="Run detail", task=GMM1D, run=unswept)
    _no_errors(at)
    provenance = at.json[0].value
    assert "NaN" not in provenance and "null" not in provenance and '"sweep_id"' not in provenance
    _no_missing_cells(at)
    _downloads_per_table(at)


def test_curves_chart_symlog_labels_and_palette(store_path):
    from negguide.dashboard import plots
    from negguide.results.palette import METHOD_COLOURS

    store = Store(store_path)
    info = data.task_info(store, GMM1D)
    points = data.curve_points(data.filter_board(data.load_board(store), info), info.quality_metric)
    spec = plots.curves_chart(points, info.quality_metric, info.threshold).to_dict()
    text = str(spec)
    assert "'type': 'symlog'" in text and "'mark': {'type': 'text'" in text  # log-like safety axis, scale labels drawn
    assert plots.STAR in text  # the star the caption promises
    colour = next(layer["encoding"]["color"] for layer in spec["hconcat"][0]["layer"] if "color" in layer.get("encoding", {}))
    assert dict(zip(colour["scale"]["domain"], colour["scale"]["range"]))["dng"] == METHOD_COLOURS["dng"]


def test_palette_is_fixed_and_deterministic():
    from negguide.results.palette import FALLBACK_COLOURS, UNGUIDED_COLOUR, colour_scale, method_colour

    assert method_colour("dng") == "#e15759" and method_colour("none") == UNGUIDED_COLOUR
    assert method_colour("my-method") == method_colour("my-method") in FALLBACK_COLOURS
    assert colour_scale(["np", "dng", "np"]) == (["dng", "np"], [method_colour("dng"), method_colour("np")])


def test_pure_rank_helpers():
    assert data.rank_text(1.0) == "1" and data.rank_text("2-4") == "2-4" and data.rank_text(None) == data.MISSING
    assert data.rank_bounds("2-4") == (2, 4) and data.rank_bounds(3) == (3, 3)
    frame = pd.DataFrame({"rank": ["2-4", "1", "1-3"]})
    assert list(data.by_rank(frame)["rank"]) == ["1", "1-3", "2-4"]
    assert list(data.clean_cells(pd.DataFrame({"a": [1.5, np.nan], "b": [None, "x"]})).iloc[1]) == [data.MISSING, "x"]
