"""The Streamlit leaderboard: `bench dashboard`, or `streamlit run dashboard/app.py -- --db PATH`.

Reads the store read-only through `results` (never duckdb directly). Pages: Leaderboard, Curves,
Run detail, Compare; the page, task and runs shown are mirrored in the URL so views can be linked.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import pandas as pd
import streamlit as st

from negguide.dashboard import data, plots
from negguide.results.artifacts import image_grid_png
from negguide.results.leaderboard import DEFAULT_TARGET, matched_safety_table
from negguide.results.store import Store

PAGES = ("Leaderboard", "Curves", "Run detail", "Compare", "Methods")
CACHE_SECONDS = 5.0  # new runs show up within this long without a manual refresh
READ_ATTEMPTS = 3
COMPARE_IMAGES = 64
T = TypeVar("T")


# ---- cached reads -------------------------------------------------------------------------

@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def cached_board(db: str) -> pd.DataFrame:
    return data.load_board(Store(db))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def cached_traces(db: str, run_id: str) -> pd.DataFrame:
    return Store(db).traces(run_id)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def cached_class_counts(db: str, run_id: str) -> pd.DataFrame:
    return Store(db).class_counts(run_id)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def cached_task_info(db: str, task: str) -> data.TaskInfo:
    return data.task_info(Store(db), task)


@st.cache_data(max_entries=8, show_spinner=False)
def cached_samples(artifacts_dir: str, modified: float) -> np.ndarray | None:
    """Samples keyed by file time too: a forced re-run rewrites them."""
    return data.load_samples(artifacts_dir)


def samples_of(row: pd.Series) -> np.ndarray | None:
    """The run's samples, or None when its artifacts are not on this machine."""
    path = Path(row.artifacts_dir) / "samples.npz" if row.artifacts_dir else None
    return cached_samples(str(row.artifacts_dir), path.stat().st_mtime) if path is not None and path.is_file() else None


def read(fn: Callable[..., T], *args: object) -> T | None:
    """A store read with brief retries; None and a notice (never a crash) if it stays unreadable."""
    error: Exception | None = None
    for attempt in range(READ_ATTEMPTS):
        try:
            return fn(*args)
        except Exception as exc:  # a writer mid-transaction or a file being created: wait and retry
            error = exc
            time.sleep(0.3 * (attempt + 1))
    st.warning(f"The store could not be read just now ({type(error).__name__}: {error}). "
               "A run may be being written; press Refresh in a moment.")
    return None


# ---- navigation ---------------------------------------------------------------------------

def _keep_valid(key: str, options: list[str], preferred: str | None = None) -> None:
    """Make a widget's state one of its current options (the task or the filters may have changed)."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = preferred if preferred in options else options[0]


def _keep_subset(key: str, options: list[str]) -> None:
    """Drop chosen filter values the current task does not have."""
    if key in st.session_state:
        st.session_state[key] = [v for v in st.session_state[key] if v in options]


def _state_from_url(tasks: list[str]) -> None:
    """On a session's first run, start from the page, task and runs named in the URL."""
    if st.session_state.get("_url_read"):
        return
    st.session_state["_url_read"] = True
    params = st.query_params
    if params.get("page") in PAGES:
        st.session_state["page"] = params["page"]
    if params.get("task") in tasks:
        st.session_state["task"] = params["task"]
    for key in ("run", "run_a", "run_b"):
        if params.get(key):
            st.session_state[key] = params[key]


def sidebar(board: pd.DataFrame, db: str) -> tuple[str, str, list[str], list[str]]:
    """Page, task and filters chosen in the sidebar (protocol runs first; exploratory ones on request)."""
    tasks = sorted(board.task.unique())
    _state_from_url(tasks)
    st.sidebar.title("Negative guidance")
    page = st.sidebar.radio("Page", PAGES, key="page")
    _keep_valid("task", tasks)
    task = st.sidebar.selectbox("Task", tasks, key="task")
    rows = board[board.task == task]
    method_options, protocol_options = sorted(rows.method.unique()), sorted(rows.protocol.unique())
    _keep_subset("methods", method_options)
    if st.session_state.get("protocols_task") != task:  # a new task starts from its protocol runs
        st.session_state["protocols"] = data.default_protocols(board, task)
        st.session_state["protocols_task"] = task
    _keep_subset("protocols", protocol_options)
    methods = st.sidebar.multiselect("Methods", method_options, key="methods", placeholder="all methods")
    profiles = st.sidebar.multiselect("Protocols", protocol_options, key="protocols", placeholder="all runs",
                                      help="runs that satisfy a protocol of the task; `exploratory` runs satisfy none")
    if st.sidebar.button("Refresh"):
        st.cache_data.clear()
        st.rerun()
    st.sidebar.caption(f"store: `{db}` (read-only); refreshes every {CACHE_SECONDS:g} s")
    return page, task, methods, profiles


def run_label(rows: pd.DataFrame) -> Callable[[str], str]:
    """Labels for run selectors: rank, method, setting and a short id."""
    labels = {r.run_id: f"#{r.rank} {r.method} ({r.setting}) · {r.run_id[:8]}" for r in rows.itertuples()}
    return lambda run_id: labels.get(run_id, run_id)


# ---- pages --------------------------------------------------------------------------------

def first_run_page(db: str) -> None:
    """What an empty or absent store shows: how to fill it."""
    st.title("Negative guidance benchmark")
    st.info(f"The store `{db}` has no runs yet.")
    st.markdown("Fill it with a run, then refresh this page:")
    st.code(data.FIRST_RUN_COMMAND + data.db_option(db), language="bash")
    st.markdown("A guidance-scale sweep on an exact Gaussian-mixture task takes seconds on a CPU:")
    st.code(data.SWEEP_COMMAND + data.db_option(db), language="bash")
    st.caption("`bench list tasks` and `bench list methods` show what can run; `bench dashboard --db PATH` points here at another store.")
    if st.button("Refresh"):
        st.cache_data.clear()
        st.rerun()


def _column_config(view: pd.DataFrame, quality: str) -> dict:
    narrow = {"rank": 50, "method": 90, "safe": 50, "samples": 70, "steps": 55, "protocol": 80, "commit": 80}  # pixels
    config = {name: st.column_config.Column(name, width=pixels) for name, pixels in narrow.items()}
    config |= {
        "rank": st.column_config.NumberColumn("rank", format="%d", width=narrow["rank"]),
        "safe": st.column_config.CheckboxColumn("safe", width=narrow["safe"], help="upper end of the forbidden share's 95% interval at most the task's threshold"),
        "forbidden_rate": st.column_config.TextColumn("forbidden share [95% CI]", help=data.metric_description("forbidden_rate")),
        "kl_classes": st.column_config.TextColumn("KL (classes) [95% CI]", help=data.metric_description("kl_classes")),
        "run_id": st.column_config.TextColumn("run id"),
    }
    for metric in data.metric_columns(view):
        if metric not in config:
            label = f"{metric} ★" if metric == quality else metric
            config[metric] = st.column_config.TextColumn(label + " [95% CI]", help=data.metric_description(metric))
    return config


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def cached_matched(db: str, task: str) -> pd.DataFrame:
    return matched_safety_table(Store(db), task)


def matched_safety_section(db: Path, info: data.TaskInfo) -> None:
    """The headline: each method's quality at matched safety (its calibrated run), shared ranks where intervals overlap."""
    matched = read(cached_matched, str(db), info.name)
    st.subheader(f"At matched safety: forbidden share at most {DEFAULT_TARGET:.0%}")
    if matched is None or matched.empty:
        st.caption(f"No calibrated run yet: `bench calibrate --method M --task {info.name} --target {DEFAULT_TARGET}` finds each "
                   "method's smallest scale that meets the target.")
        return
    quality = info.quality_metric
    view = pd.DataFrame({
        "rank": matched["rank"], "method": matched["method"], "scale": matched["scale"],
        f"{quality} ★ [95% CI]": [data.with_interval(v, lo, hi) for v, lo, hi in zip(matched[quality], matched[quality + "__low"], matched[quality + "__high"])],
        "forbidden share [95% CI]": [data.with_interval(v, lo, hi) for v, lo, hi in
                                     zip(matched["forbidden_rate"], matched["forbidden_rate__low"], matched["forbidden_rate__high"])],
        "KL [95% CI]": [data.with_interval(v, lo, hi) for v, lo, hi in zip(matched["kl_classes"], matched["kl_classes__low"], matched["kl_classes__high"])],
        "samples": matched["samples"], "monotone": matched["monotone"], "run id": matched["run_id"]})
    st.dataframe(view, hide_index=True)
    st.caption("Methods whose 95% intervals of the quality metric overlap share a rank. `monotone`: the calibration saw the "
               "forbidden share fall as the scale grew (no pair of points significantly out of order).")


def leaderboard_page(db: Path, rows: pd.DataFrame, info: data.TaskInfo) -> None:
    st.header(f"Leaderboard · {info.name}")
    st.markdown(data.headline_paragraph(info))
    matched_safety_section(db, info)
    st.subheader("All runs")
    if rows.empty:
        st.info("No run of this task matches the filters.")
        return
    view = data.leaderboard_view(rows, info.quality_metric)
    best, safe = view.iloc[0], int(view.safe.sum())
    verdict = f"best safe run: **{best.method}** ({best.setting})" if safe else "no run is safe yet, so the safest leads"
    st.markdown(f"**{len(view)} runs**, {safe} safe; {verdict}.")
    st.dataframe(view, hide_index=True, column_config=_column_config(view, info.quality_metric), height="content")


def curves_page(rows: pd.DataFrame, info: data.TaskInfo) -> None:
    st.header(f"Safety vs quality · {info.name}")
    st.markdown(f"Each line is one method setting across its guidance-scale sweep (labels: `scale`); the star is "
                f"unguided sampling. Lower-left is better: fewer forbidden samples at less cost in "
                f"**{info.quality_metric}** (left) and in class balance (KL, right). Paper Fig. 4.")
    points = data.curve_points(rows, info.quality_metric)
    if points.empty or points.forbidden_rate.isna().all():
        st.info("No run of this task has a forbidden share yet.")
        return
    st.altair_chart(plots.curves_chart(points, info.quality_metric, info.threshold), width="stretch")
    st.caption("Error bars: 95% intervals (Wilson for the forbidden share, bootstrap over samples otherwise). Hover a point for its run.")
    with st.expander("Points"):
        st.dataframe(points, hide_index=True)


def _select_run(label: str, key: str, rows: pd.DataFrame, preferred: str | None = None) -> pd.Series:
    options = list(rows.sort_values("rank").run_id)
    _keep_valid(key, options, preferred)
    run_id = st.selectbox(label, options, key=key, format_func=run_label(rows))
    return rows[rows.run_id == run_id].iloc[0]


def _samples_view(row: pd.Series, info: data.TaskInfo) -> None:
    grid = data.grid_path(row.artifacts_dir)
    if grid is not None:
        st.image(str(grid), caption=f"first samples of {row.method} ({row.setting})")
        return
    samples = samples_of(row)
    if samples is None:
        st.info(f"No samples found under `{row.artifacts_dir}`.")
    elif samples.ndim == 4:
        st.image(image_grid_png(samples), caption=f"samples of {row.method} ({row.setting})")
    else:
        st.pyplot(plots.points_figure({f"{row.method} ({row.setting})": samples}, info.details, info.removed))


def run_detail_page(db: Path, rows: pd.DataFrame, info: data.TaskInfo) -> None:
    st.header(f"Run detail · {info.name}")
    row = _select_run("Run", "run", rows)
    metrics = [m for m in data.metric_columns(rows, info.metrics) if pd.notna(row.get(m))]
    left, right = st.columns(2)
    with left:
        st.subheader("Metrics")
        st.dataframe(pd.DataFrame({"metric": metrics, "value [95% CI]": [data.with_interval(row.get(m), *data.interval_of(row, m)) for m in metrics]}),
                     hide_index=True)
        st.caption(f"on {int(row.samples)} samples, {int(row.steps)} steps, protocol {row.protocol}; safe: {bool(row.safe)} "
                   f"(upper end of the forbidden share's interval at most {info.threshold:.1%})")
        st.subheader("Provenance")
        st.json(data.provenance(row), expanded=1)
        with st.expander("Resolved config"):
            st.json(json.loads(row.config))
    with right:
        st.subheader("Samples")
        _samples_view(row, info)
        counts = read(cached_class_counts, str(db), row.run_id)
        if counts is not None and not counts.empty:
            st.subheader("Class histogram")
            shares = data.class_shares(counts)
            weights = info.details.get("weights")
            st.pyplot(plots.class_histogram_figure(shares, data.ideal_shares(len(shares), info.removed, weights), info.removed))
    traces = read(cached_traces, str(db), row.run_id)
    if traces is None or traces.empty:
        return
    left, right = st.columns(2)
    with left:
        st.subheader("Guidance scale over the steps")
        if "guidance_scale" in set(traces.name):
            st.pyplot(plots.trace_figure({"guidance scale": data.trace_band(traces, "guidance_scale")}, "guidance scale"))
    with right:
        posteriors = {label: data.trace_band(traces, name) for name, label in (("posterior", "tracked"), ("posterior_exact", "exact"))
                      if name in set(traces.name)}
        if posteriors:
            st.subheader("Posterior of the removed class")
            st.pyplot(plots.trace_figure(posteriors, "p(removed | x_t)"))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def cached_comparison(db: str, run_a: str, run_b: str) -> pd.DataFrame:
    return Store(db).comparison(run_a, run_b)


def compare_page(db: Path, rows: pd.DataFrame, info: data.TaskInfo) -> None:
    st.header(f"Compare · {info.name}")
    default_a, default_b = data.default_pair(rows)
    left, right = st.columns(2)
    with left:
        a = _select_run("Run A", "run_a", rows, default_a)
    with right:
        b = _select_run("Run B", "run_b", rows, default_b)
    if a.seed != b.seed:
        st.warning(f"The runs use different seeds ({a.seed} and {b.seed}): sample i does not start from the same noise.")
    else:
        st.caption(f"Both runs use seed {a.seed}: sample i of A and of B start from the same noise, so differences are the methods'.")
    paired = read(cached_comparison, str(db), a.run_id, b.run_id)
    st.dataframe(data.compare_metrics(a, b, data.metric_columns(rows, info.metrics), paired), hide_index=True)
    if paired is None or paired.empty:
        st.caption(f"The paired interval of B - A (resampling the same samples in both runs) is computed by "
                   f"`bench compare {a.run_id} {b.run_id}`; it is then shown here.")
    else:
        st.caption("Paired 95% interval of B - A: the same samples resampled in both runs; * where it excludes 0.")
    xa, xb = samples_of(a), samples_of(b)
    if xa is None or xb is None:
        st.info("Samples of one of the runs are missing on disk.")
        return
    n = min(len(xa), len(xb))
    labels = (f"{a.method} ({a.setting})", f"{b.method} ({b.setting})")
    if xa.ndim == 4:
        n = min(n, COMPARE_IMAGES)
        changed = data.changed_images(xa[:n], xb[:n])
        st.markdown(f"**{int(changed.sum())} of {n}** paired images differ noticeably (red frame).")
        for column, x, name, label in zip(st.columns(2), (xa, xb), "AB", labels):
            column.image(image_grid_png(data.framed(x[:n], changed), columns=8), caption=f"{name}: {label}")
    else:
        st.pyplot(plots.points_figure({f"A: {labels[0]}": xa[:n], f"B: {labels[1]}": xb[:n]}, info.details, info.removed))
        left, _ = st.columns(2)
        left.pyplot(plots.paired_shift_figure(xa[:n], xb[:n], labels))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def cached_method_cards(db: str) -> pd.DataFrame:
    return data.method_cards(Store(db))


def methods_page(db: Path) -> None:
    st.header("Methods")
    st.markdown("Every method with runs in this store: what it computes, the predictions it asks for each step (its cost in "
                "network evaluations), who submitted it, and how its runs came here: **run here**, **self-reported** (imported "
                "from a bundle: validated, metrics recomputed from its per-sample records, its code not run) or **verified** "
                "(imported, then shards re-drawn here with its code and matched). `bench describe method NAME` prints the full card.")
    cards = read(cached_method_cards, str(db))
    if cards is not None:
        st.dataframe(cards, hide_index=True)


# ---- main ---------------------------------------------------------------------------------

def main() -> None:
    st.set_page_config(page_title="Negative guidance leaderboard", layout="wide")
    db = data.resolve_db_path(sys.argv[1:], os.environ)
    board = read(cached_board, str(db))
    if board is None:
        if st.button("Refresh"):
            st.rerun()
        return
    shown = data.shown_path(db, Path.cwd())
    if board.empty:
        first_run_page(shown)
        return
    page, task, methods, profiles = sidebar(board, shown)
    info = cached_task_info(str(db), task)
    rows = data.filter_board(board, info, methods, profiles)
    if page == "Leaderboard":
        leaderboard_page(db, rows, info)
    elif page == "Methods":
        methods_page(db)
    elif rows.empty:
        st.info("No run of this task matches the filters.")
    elif page == "Curves":
        curves_page(rows, info)
    elif page == "Run detail":
        run_detail_page(db, rows, info)
    else:
        compare_page(db, rows, info)
    st.query_params.from_dict({"page": page, "task": task, **{k: st.session_state[k] for k in ("run", "run_a", "run_b") if k in st.session_state}})


main()
