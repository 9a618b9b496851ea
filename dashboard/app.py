"""The Streamlit leaderboard: `bench dashboard`, or `streamlit run dashboard/app.py -- --db PATH`.

Reads the store read-only through `results` (never duckdb directly). Pages: Overview (every task at
matched safety, mean rank and win rate), Leaderboard (one task, every calibrated target), Curves,
Method (one method across tasks), Run detail, Compare, Methods. The page, task, target, method and runs
shown are mirrored in the URL, so every view (and every table row) is a link.
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
from negguide.results.store import Store

PAGES = ("Overview", "Leaderboard", "Curves", "Method", "Run detail", "Compare", "Methods")
URL_KEYS = ("run", "run_a", "run_b", "method")
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
    """On a session's first run, start from the page, task, target, method and runs named in the URL.

    A task the store does not have is remembered (and said on the page), never swapped silently for another."""
    if st.session_state.get("_url_read"):
        return
    st.session_state["_url_read"] = True
    params = st.query_params
    if params.get("page") in PAGES:
        st.session_state["page"] = params["page"]
    if params.get("task") in tasks:
        st.session_state["task"] = params["task"]
    elif params.get("task"):
        st.session_state["unknown_task"] = params["task"]
    if params.get("target"):
        try:
            st.session_state["target"] = float(params["target"])
        except ValueError:
            st.session_state["unknown_target"] = params["target"]
    for key in URL_KEYS:
        if params.get(key):
            st.session_state[key] = params[key]


def _task_chosen() -> None:
    """Picking a task in the sidebar answers the unknown task of the URL."""
    st.session_state.pop("unknown_task", None)


def sidebar(board: pd.DataFrame, db: str) -> tuple[str, str, list[str], list[str]]:
    """Page, task and filters chosen in the sidebar (protocol runs first; exploratory ones on request)."""
    tasks = sorted(board.task.unique())
    _state_from_url(tasks)
    st.sidebar.title("Negative guidance")
    page = st.sidebar.radio("Page", PAGES, key="page")
    _keep_valid("task", tasks)
    task = st.sidebar.selectbox("Task", tasks, key="task", on_change=_task_chosen)
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
    st.sidebar.caption(f"store: `{store_label(Path(db))}` (read-only); refreshes every {CACHE_SECONDS:g} s", help=f"full path: {db}")
    return page, task, methods, profiles


def store_label(db: Path) -> str:
    """The store as the user named it from here: relative to the working directory, else its file name (the full
    path goes in the tooltip, so pages and screenshots carry no path of the machine)."""
    try:
        return str(db.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return db.name


def unknown_task_notice(name: str, tasks: list[str]) -> None:
    """The URL names a task this store has no runs of: say so, and offer the ones it has."""
    import difflib

    close = difflib.get_close_matches(name, tasks, n=1)
    hint = f" Did you mean **{close[0]}**?" if close else ""
    st.error(f"This store has no runs of the task **{name}** named in the URL.{hint} Tasks here: "
             + ", ".join(f"[{t}]({data.task_link(t)})" for t in tasks) + ". Pick one in the sidebar.")


# ---- tables -------------------------------------------------------------------------------

def link_columns(view: pd.DataFrame) -> dict:
    """Column settings for the link columns a view may have (run -> run detail, page -> method page, task -> leaderboard)."""
    config = {}
    if "run" in view:
        config["run"] = st.column_config.LinkColumn("run", display_text=data.SHORT_ID, help="open the run's detail page", width=80)
    if "page" in view:
        config["page"] = st.column_config.LinkColumn("page", display_text=data.METHOD_OF_LINK, help="the method across tasks", width=90)
    if "leaderboard" in view:
        config["leaderboard"] = st.column_config.LinkColumn("leaderboard", display_text=data.TASK_OF_LINK, help="the task's leaderboard")
    return config


def downloads(frame: pd.DataFrame, name: str) -> None:
    """CSV and JSON of a table (machine-readable: numbers, not text with intervals, where the caller passes them)."""
    left, right, _ = st.columns([1, 1, 8])
    left.download_button("CSV", frame.to_csv(index=False), file_name=f"{name}.csv", mime="text/csv", key=f"{name}-csv", icon=":material/download:")
    right.download_button("JSON", frame.to_json(orient="records", indent=1, default_handler=str), file_name=f"{name}.json",
                          mime="application/json", key=f"{name}-json", icon=":material/download:")


def table(view: pd.DataFrame, name: str, raw: pd.DataFrame | None = None, column_config: dict | None = None) -> None:
    """One displayed table with its links and its CSV/JSON downloads."""
    st.dataframe(view, hide_index=True, column_config={**link_columns(view), **(column_config or {})})
    downloads(data.downloadable(raw if raw is not None else view), name)


def run_label(rows: pd.DataFrame) -> Callable[[str], str]:
    """Labels for run selectors: rank group, method, setting and a short id."""
    labels = {r.run_id: f"#{data.rank_text(r.rank)} {r.method} ({r.setting}) · {r.run_id[:8]}" for r in rows.itertuples()}
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
    narrow = {"rank": 55, "method": 90, "safe": 45, "samples": 65, "steps": 50, "protocol": 80, "date": 90}  # pixels
    config = {name: st.column_config.Column(name, width=pixels) for name, pixels in narrow.items()}
    config |= {
        "rank": st.column_config.TextColumn("rank", width=narrow["rank"], help="rank group: the best and worst rank the 95% intervals allow"),
        "safe": st.column_config.CheckboxColumn("safe", width=narrow["safe"], help="upper end of the forbidden share's 95% interval at most the task's threshold"),
        "forbidden_rate": st.column_config.TextColumn("forbidden share", help=data.metric_description("forbidden_rate") + " [95% CI]"),
        "kl_classes": st.column_config.TextColumn("KL (classes)", help=data.metric_description("kl_classes") + " [95% CI]"),
    }
    for metric in data.metric_columns(view):
        if metric not in config:
            label = f"{metric} ★" if metric == quality else metric
            config[metric] = st.column_config.TextColumn(label, help=data.metric_description(metric) + " [95% CI]")
    return config


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def cached_targets(db: str, task: str) -> list[float]:
    return data.calibrated_targets(Store(db), task)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def cached_matched(db: str, task: str, target: float) -> pd.DataFrame:
    return data.matched(Store(db), task, target)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def cached_defaults(db: str, methods: tuple[str, ...]) -> dict[str, dict]:
    return data.method_defaults(Store(db), methods)


def target_selector(targets: list[float], threshold: float | None, label: str = "Target forbidden share") -> float:
    """The calibrated target shown (from the URL when it names one of them; else the task's threshold, else the first), as a select box."""
    wanted = st.session_state.get("target")
    match = next((t for t in targets if wanted is not None and np.isclose(t, wanted)), None)
    st.session_state["target"] = match if match is not None else data.preferred_target(targets, threshold) if threshold else targets[0]
    return st.selectbox(label, targets, key="target", format_func=lambda t: f"at most {data.target_label(t)}",
                        help="each method at its calibrated scale: the smallest whose forbidden share's upper 95% bound meets the target")


def matched_safety_section(db: Path, info: data.TaskInfo) -> None:
    """The headline: each method's quality at matched safety (its calibrated run) for a chosen target, and every target at a glance."""
    targets = read(cached_targets, str(db), info.name) or []
    st.subheader("At matched safety")
    if not targets:
        st.caption(f"No calibrated run yet: `bench calibrate --method M --task {info.name} --target {info.threshold}` finds each "
                   "method's smallest scale that meets the target.")
        return
    target = target_selector(targets, info.threshold)
    matched = read(cached_matched, str(db), info.name, target)
    if matched is None or matched.empty:
        st.info(f"No method of {info.name} is calibrated at {data.target_label(target)} under the protocols' sampler.")
        return
    quality = info.quality_metric
    defaults = cached_defaults(str(db), tuple(sorted(matched.method.unique())))
    view = data.matched_view(matched, quality, defaults)
    table(view, f"{info.name}-matched-{data.target_label(target)}", raw=matched,
          column_config={quality: st.column_config.TextColumn(f"{quality} ★", help=data.metric_description(quality) + " [95% CI]"),
                         "rank": st.column_config.TextColumn("rank", width=55)})
    st.caption(f"Each method at the smallest scale whose forbidden share's upper 95% bound is at most {data.target_label(target)}. "
               f"Values: `value [95% CI]`. Rank groups (`1-3`): the best and worst rank the 95% intervals of {quality} allow. "
               "`monotone`: the calibration saw the forbidden share fall as the scale grew. The run link opens its detail page.")
    if len(targets) > 1:
        tables = {t: read(cached_matched, str(db), info.name, t) for t in targets}
        glance = data.targets_at_a_glance({t: f for t, f in tables.items() if f is not None}, quality)
        st.markdown(f"**Every calibrated target**: {quality} [95% CI] #rank group at each target")
        table(glance, f"{info.name}-targets")


def leaderboard_page(db: Path, rows: pd.DataFrame, info: data.TaskInfo) -> None:
    st.header(f"Leaderboard · {info.name}")
    st.markdown(data.headline_paragraph(info))
    matched_safety_section(db, info)
    st.subheader("All runs")
    if rows.empty:
        st.info("No run of this task matches the filters.")
        return
    view, constant, others = data.leaderboard_view(rows, info.quality_metric)
    best, safe = rows.iloc[0], int(rows.safe.sum())
    verdict = f"best safe run: **{best.method}** ({best.setting})" if safe else "no run is safe yet, so the safest leads"
    shared = "; ".join(f"{k} {v}" for k, v in constant.items())
    st.markdown(f"**{len(view)} runs**, {safe} safe; {verdict}." + (f" Every run: {shared}." if shared else ""))
    table(view, f"{info.name}-runs", raw=rows, column_config=_column_config(view, info.quality_metric))
    if len(others.columns) > 3:  # rank, method, setting and at least one metric
        st.markdown("**The task's other metrics**, same rows and order:")
        table(others, f"{info.name}-other-metrics", raw=rows, column_config=_column_config(others, info.quality_metric))


def curves_page(rows: pd.DataFrame, info: data.TaskInfo) -> None:
    st.header(f"Safety vs quality · {info.name}")
    st.markdown(f"One colour per method; a line joins one method setting across its guidance scales, each point labelled with "
                f"its scale; the star is unguided sampling; the dashed line is the task's threshold ({info.threshold:.1%}). "
                f"Lower-left is better: fewer forbidden samples at less cost in **{info.quality_metric}** (left) and in class "
                f"balance (KL, right). Paper Fig. 4.")
    points = data.curve_points(rows, info.quality_metric)
    if points.empty or points.forbidden_rate.isna().all():
        st.info("No run of this task has a forbidden share yet.")
        return
    st.altair_chart(plots.curves_chart(points, info.quality_metric, info.threshold), width="stretch")
    st.caption("The forbidden-share axis is symlog (linear below 0.1%, logarithmic above), so 0 stays on it; a quality axis marked "
               "log is logarithmic. Error bars: 95% intervals (Wilson for the forbidden share, bootstrap over samples otherwise). "
               "Hover a point for its run; drag to pan, scroll to zoom.")
    with st.expander("Points"):
        table(data.clean_cells(points.assign(run=[data.run_link(info.name, r) for r in points.run_id]).drop(columns=["run_id"])),
              f"{info.name}-points", raw=points)


def _select_run(label: str, key: str, rows: pd.DataFrame, preferred: str | None = None) -> pd.Series:
    options = list(data.by_rank(rows).run_id)
    _keep_valid(key, options, preferred)
    run_id = st.selectbox(label, options, key=key, format_func=run_label(rows))
    return rows[rows.run_id == run_id].iloc[0]


def _with_linked_run(rows: pd.DataFrame, task_rows: pd.DataFrame, key: str) -> pd.DataFrame | None:
    """The rows to choose from, with the run a link names even where the filters hide it (a calibrated exploratory run);
    None, after an error on the page, when the link names a run this task does not have."""
    wanted = st.session_state.get(key)
    if not wanted or wanted in set(rows.run_id):
        return rows
    found = task_rows[task_rows.run_id.str.startswith(wanted)]  # a full id or a unique prefix of one
    if len(found) == 1:
        st.session_state[key] = found.run_id.iloc[0]
        return rows if found.run_id.iloc[0] in set(rows.run_id) else pd.concat([rows, found])
    st.error(f"The task {task_rows.task.iloc[0]} has {'several runs' if len(found) else 'no run'} with the id `{wanted}` named in the URL; "
             "pick one below.")
    st.session_state.pop(key)
    return rows


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


def run_detail_page(db: Path, rows: pd.DataFrame, task_rows: pd.DataFrame, info: data.TaskInfo) -> None:
    st.header(f"Run detail · {info.name}")
    rows = _with_linked_run(rows, task_rows, "run")
    if rows.empty:
        st.info("No run of this task matches the filters.")
        return
    row = _select_run("Run", "run", rows)
    metrics = [m for m in data.metric_columns(rows, info.metrics) if pd.notna(row.get(m))]
    left, right = st.columns(2)
    with left:
        st.subheader("Metrics")
        metric_table = pd.DataFrame({"metric": metrics, "value [95% CI]": [data.with_interval(row.get(m), *data.interval_of(row, m)) for m in metrics]})
        table(metric_table, f"run-{row.run_id[:8]}-metrics",
              raw=pd.DataFrame({"metric": metrics, "value": [row.get(m) for m in metrics], "low": [data.interval_of(row, m)[0] for m in metrics],
                                "high": [data.interval_of(row, m)[1] for m in metrics]}))
        st.caption(f"rank {data.rank_text(row['rank'])} of {len(task_rows)} in its task; on {int(row.samples)} samples, {int(row.steps)} steps, "
                   f"protocol {row.protocol}; safe: {'yes' if row.safe else 'no'} "
                   f"(upper end of the forbidden share's interval at most {info.threshold:.1%})")
        st.subheader("Parameters")
        defaults = cached_defaults(str(db), (row.method,)).get(row.method, {})
        table(data.parameters_view(row, defaults), f"run-{row.run_id[:8]}-parameters")
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


def compare_page(db: Path, rows: pd.DataFrame, task_rows: pd.DataFrame, info: data.TaskInfo) -> None:
    st.header(f"Compare · {info.name}")
    rows = _with_linked_run(_with_linked_run(rows, task_rows, "run_a"), task_rows, "run_b")
    if rows.empty:
        st.info("No run of this task matches the filters.")
        return
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
    table(data.clean_cells(data.compare_metrics(a, b, data.metric_columns(rows, info.metrics), paired)), f"compare-{a.run_id[:8]}-{b.run_id[:8]}")
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
        table(data.clean_cells(cards.assign(page=[data.method_link(m) for m in cards.method])), "methods", raw=cards)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def cached_overview_targets(db: str, tasks: tuple[str, ...]) -> list[float]:
    return data.overview_targets(Store(db), tasks)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def cached_overview(db: str, tasks: tuple[str, ...], target: float) -> pd.DataFrame:
    return data.overview_rows(Store(db), tasks, target)


def overview_page(db: Path, board: pd.DataFrame) -> None:
    """Every task at matched safety: a HELM-style summary (mean win rate, mean rank) and each method's headline per task."""
    tasks = tuple(sorted(board.task.unique()))
    st.header("Overview · every task at matched safety")
    targets = read(cached_overview_targets, str(db), tasks) or []
    tasks_view = data.tasks_view(board)
    if not targets:
        st.info("No method is calibrated on any task yet: `bench calibrate --method M --task T --target 0.02` finds a method's smallest "
                "scale meeting a target forbidden share. Until then each task's leaderboard ranks all its runs.")
        table(tasks_view, "tasks")
        return
    target = target_selector(targets, None, "Target forbidden share (every task)")
    rows = read(cached_overview, str(db), tasks, target)
    if rows is None or rows.empty:
        st.info(f"No task has a calibrated method at {data.target_label(target)}.")
        return
    summary = data.overview_summary(rows)
    st.markdown(f"Each method at its calibrated scale on each task: the smallest scale whose forbidden share's upper 95% bound is at "
                f"most **{data.target_label(target)}**. **Win rate** (as HELM's mean win rate, with intervals): on each task, the share "
                f"of the other methods whose 95% interval of the task's quality metric lies entirely worse (an overlap counts half), "
                f"averaged over the tasks a method shares with another. **Mean rank**: the mean midpoint of its rank groups.")
    table(summary, f"overview-summary-{data.target_label(target)}", raw=summary.drop(columns=["page"]),
          column_config={"method": st.column_config.TextColumn("method", width=110)})
    st.subheader("Headline per task")
    grid = data.overview_grid(rows, list(summary.method))
    table(grid, f"overview-{data.target_label(target)}", raw=rows)
    st.caption("Each cell: the task's quality metric (↓ lower is better, ↑ higher) `value [95% CI] #rank group`; — where the method is "
               "not calibrated at this target on that task.")
    st.altair_chart(plots.overview_chart(rows), width="content")
    st.caption("Dots: each method's headline; bars: its 95% interval; labels: its rank group. Each panel has its own axis.")
    st.subheader("Tasks")
    table(tasks_view, "tasks")


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def cached_method_headlines(db: str, tasks: tuple[str, ...], method: str) -> pd.DataFrame:
    return data.method_headlines(Store(db), tasks, method)


def method_page(db: Path, board: pd.DataFrame) -> None:
    """One method across every task: its headline at each calibrated target, its card and all its runs."""
    methods = sorted(board.method.unique())
    wanted = st.session_state.get("method")
    if wanted and wanted not in methods:
        st.error(f"This store has no runs of the method **{wanted}** named in the URL. Methods here: {', '.join(methods)}.")
        st.session_state.pop("method")
    _keep_valid("method", methods, data.UNGUIDED if len(methods) == 1 else next((m for m in methods if m != data.UNGUIDED), methods[0]))
    method = st.selectbox("Method", methods, key="method")
    st.header(f"Method · {method}")
    cards = read(cached_method_cards, str(db))
    card = cards[cards.method == method] if cards is not None else pd.DataFrame()
    if not card.empty and card.summary.iloc[0]:
        st.markdown(f"{card.summary.iloc[0]}. Predictions per step: {card['predictions per step'].iloc[0] or 'none'}; defaults: "
                    f"{card.defaults.iloc[0] or 'none'}.")
    tasks = tuple(sorted(board.task.unique()))
    st.subheader("At matched safety, every task and target")
    headlines = read(cached_method_headlines, str(db), tasks, method)
    if headlines is None or headlines.empty:
        st.caption(f"{method} is not calibrated on any task: `bench calibrate --method {method} --task T --target 0.02`.")
    else:
        table(headlines, f"{method}-headlines")
    st.subheader("Every run")
    qualities = {t: cached_task_info(str(db), t).quality_metric for t in tasks}
    runs = data.method_runs(board, method, qualities)
    table(runs, f"{method}-runs", raw=board[board.method == method],
          column_config={"safe": st.column_config.CheckboxColumn("safe", width=45), "rank": st.column_config.TextColumn("rank", width=55)})
    st.caption("Rank: the run's rank group among all runs of its task (every protocol).")


# ---- main ---------------------------------------------------------------------------------

def main() -> None:
    st.set_page_config(page_title="Negative guidance leaderboard", layout="wide")
    # Streamlit's wide layout keeps 5rem each side of the page: the tables need that width more than the margin does
    st.html("<style>[data-testid='stMainBlockContainer'] {padding-left: 1.5rem; padding-right: 1.5rem}</style>")
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
    url = {"page": page, "task": task}
    if page == "Overview":
        overview_page(db, board)
    elif page == "Method":
        method_page(db, board)
        url["method"] = st.session_state.get("method")
    elif page == "Methods":
        methods_page(db)
    elif "unknown_task" in st.session_state:
        unknown_task_notice(st.session_state["unknown_task"], sorted(board.task.unique()))
        url["task"] = st.session_state["unknown_task"]  # the URL keeps saying what was asked for
    else:
        _task_page(db, board, page, task, methods, profiles, url)
    if page in ("Overview", "Leaderboard") and st.session_state.get("target") is not None:
        url["target"] = f"{st.session_state['target']:g}"
    st.query_params.from_dict({k: v for k, v in url.items() if v})


def _task_page(db: Path, board: pd.DataFrame, page: str, task: str, methods: list[str], profiles: list[str], url: dict) -> None:
    """The pages of one task: Leaderboard, Curves, Run detail, Compare."""
    info = cached_task_info(str(db), task)
    rows = data.filter_board(board, info, methods, profiles)
    task_rows = board[board.task == task]
    if page == "Leaderboard":
        leaderboard_page(db, rows, info)
    elif page == "Run detail":
        run_detail_page(db, rows, task_rows, info)
        url["run"] = st.session_state.get("run")
    elif page == "Compare":
        compare_page(db, rows, task_rows, info)
        url |= {k: st.session_state.get(k) for k in ("run_a", "run_b")}
    elif rows.empty:
        st.info("No run of this task matches the filters.")
    else:
        curves_page(rows, info)


main()
