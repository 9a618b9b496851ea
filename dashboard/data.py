"""Data shaping for the dashboard: the board, curves, histograms and sample pairs (no Streamlit here)."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from negguide.metrics.base import METRICS
from negguide.metrics.intervals import with_interval
from negguide.results import leaderboard
from negguide.results.artifacts import read_npz
from negguide.results.leaderboard import DEFAULT_TARGET, headline_of, matched_safety_table, rank_runs
from negguide.results.store import DEFAULT_DB, Store

UNGUIDED = "none"
EXPLORATORY = "exploratory"  # the protocol column of runs that satisfy none
FIRST_RUN_COMMAND = "bench run --method dng --task mnist-remove-0"
SWEEP_COMMAND = "bench sweep --method dng --task gmm1d-remove-1 --param scale=0.5,1,2"
# The columns of the `runs` table; every other column of Store.wide() is a metric.
RUN_FIELDS = ("run_id", "task", "task_version", "method", "params", "profile", "seed", "samples", "steps", "sweep_id",
              "config", "git_commit", "packages", "timings", "started_at", "finished_at", "wall_seconds", "status",
              "artifacts_dir", "protocol", "variance", "digests", "provenance", "submitter", "sampler")
INTERVAL_SUFFIXES = ("__low", "__high")  # Store.wide(intervals=True): <metric>__low, <metric>__high
DISPLAY_FIELDS = ("rank", "rank_best", "rank_worst", "safe", "scale", "setting", "line", "date", "commit")  # added by build_board
MISSING = "—"  # what a table cell shows where there is no value (never NaN or None)
HEADLINE_FIRST = ("forbidden_rate", "kl_classes")  # shown before the quality metric on every page


@dataclass(frozen=True)
class TaskInfo:
    """What the pages need to know about a task; defaults when the task is no longer registered."""

    name: str
    family: str
    removed: int | None
    quality_metric: str
    threshold: float
    details: dict = field(default_factory=dict)
    metrics: tuple[str, ...] = ()  # the task's metrics (empty: unknown, show what the runs have)


def resolve_db_path(argv: Sequence[str], environ: Mapping[str, str]) -> Path:
    """`--db PATH` (given after `--` to streamlit), else $BENCH_DB, else ./bench-data/bench.duckdb."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--db")
    try:
        known, _ = parser.parse_known_args(list(argv))
    except SystemExit:  # a bare `--db` with no value: fall back like an absent flag
        known = argparse.Namespace(db=None)
    if known.db:
        return Path(known.db)
    return Path(environ["BENCH_DB"]) if environ.get("BENCH_DB") else DEFAULT_DB


def shown_path(path: Path, cwd: Path) -> str:
    """A path as a user would type it: relative to the working folder when it lies inside it."""
    try:
        return str(path.resolve().relative_to(cwd.resolve()))
    except ValueError:
        return str(path)


def db_option(shown: str) -> str:
    """The `--db` option a command needs to reach this store (none for the default store)."""
    return "" if Path(shown) == DEFAULT_DB else f" --db {shown}"


def task_info(store: Store, name: str) -> TaskInfo:
    """The task's headline, removed class and details as its runs recorded them (defaults for older stores)."""
    quality, threshold = headline_of(store, name)
    info = store.info("task_info", name)
    if not info:
        suffix = name.rsplit("-", 1)[-1]
        return TaskInfo(name, "unknown", int(suffix) if suffix.isdigit() else None, quality, threshold)
    return TaskInfo(name, info.get("family", "unknown"), info.get("removed"), quality, threshold, dict(info.get("details", {})),
                    tuple(info.get("metrics", ())))


def higher_is_better(metric: str) -> bool:
    """The registered direction of a metric (unknown metrics read as lower-is-better)."""
    info = METRICS.get(metric)
    return bool(info and info.higher_is_better)


def metric_description(metric: str) -> str:
    info = METRICS.get(metric)
    return info.description if info else "(no description registered)"


# ---- the board ----------------------------------------------------------------------------

def _format_value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def other_params_label(params: dict, defaults: dict) -> str:
    """Non-default parameters other than `scale`: what tells one sweep line from another."""
    changed = {k: v for k, v in sorted(params.items()) if k != "scale" and (k not in defaults or defaults[k] != v)}
    return ", ".join(f"{k}={_format_value(v)}" for k, v in changed.items())


def setting_label(method: str, params: dict, defaults: dict) -> str:
    """The guidance scale and the non-default parameters, short enough for a table cell."""
    if method == UNGUIDED:
        return "unguided"
    parts = [f"scale={_format_value(params['scale'])}"] if "scale" in params else []
    other = other_params_label(params, defaults)
    return ", ".join(parts + ([other] if other else []))


def metric_columns(wide: pd.DataFrame, task_metrics: Sequence[str] = ()) -> list[str]:
    """Metric columns of a Store.wide() or board frame (the task's only, when known): safety first, then alphabetically."""
    names = [c for c in wide.columns if c not in RUN_FIELDS and c not in DISPLAY_FIELDS and not c.endswith(INTERVAL_SUFFIXES)]
    if task_metrics:
        names = [c for c in names if c in task_metrics]
    return [c for c in HEADLINE_FIRST if c in names] + sorted(c for c in names if c not in HEADLINE_FIRST)


def interval_of(row: pd.Series, metric: str) -> tuple[float, float]:
    return float(row.get(metric + "__low", np.nan)), float(row.get(metric + "__high", np.nan))


def build_board(store: Store, wide: pd.DataFrame) -> pd.DataFrame:
    """Every task's runs ranked by the shared headline (rank_runs), with display fields added.

    Headlines and method defaults come from the store (what the runs recorded), never from the registries."""
    if wide.empty:
        return wide.assign(rank=pd.Series(dtype=int), safe=pd.Series(dtype=bool))
    frames = [rank_runs(runs, *headline_of(store, task)) for task, runs in wide.groupby("task", sort=True)]
    board = with_rank_bounds(pd.concat(frames, ignore_index=True))
    params = board["params"].map(json.loads)
    board["scale"] = [p.get("scale") if m != UNGUIDED else None for m, p in zip(board.method, params)]
    board["scale"] = board["scale"].astype(float)
    defaults = {m: store.info("method_info", m).get("defaults", {}) for m in board.method.unique()}
    board["setting"] = [setting_label(m, p, defaults[m]) for m, p in zip(board.method, params)]
    board["line"] = [m + (f" ({o})" if (o := other_params_label(p, defaults[m])) else "") for m, p in zip(board.method, params)]
    board["protocol"] = board["protocol"].fillna("exploratory")
    board["date"] = pd.to_datetime(board["finished_at"]).dt.strftime("%Y-%m-%d %H:%M")
    board["commit"] = board["git_commit"].fillna("").str[:8]
    return board


def load_board(store: Store) -> pd.DataFrame:
    """The board of every stored run (empty frame for an empty or absent store)."""
    return build_board(store, store.wide(intervals=True))


def default_protocols(board: pd.DataFrame, task: str) -> list[str]:
    """The protocols shown first: every protocol the task's runs satisfy; exploratory runs only when there is nothing else."""
    found = sorted(board[board.task == task].protocol.unique())
    named = [p for p in found if p != EXPLORATORY]
    return named or found


def filter_board(board: pd.DataFrame, info: TaskInfo, methods: Sequence[str] = (), protocols: Sequence[str] = ()) -> pd.DataFrame:
    """One task's rows, optionally only some methods and protocols, ranked among themselves (shared ranks)."""
    rows = board[board.task == info.name]
    if methods:
        rows = rows[rows.method.isin(list(methods))]
    if protocols:
        rows = rows[rows.protocol.isin(list(protocols))]
    if rows.empty:
        return rows
    ranked = rank_runs(rows.drop(columns=[c for c in ("rank", "rank_best", "rank_worst", "safe") if c in rows]), info.quality_metric, info.threshold)
    return by_rank(ranked)


def leaderboard_view(rows: pd.DataFrame, quality_metric: str) -> tuple[pd.DataFrame, dict[str, str], pd.DataFrame]:
    """The leaderboard's columns (rank, method, setting, safety, KL, quality, run link), the columns left out because
    every row has the same value there (shown once in a caption instead), and the task's other metrics (rank, method,
    setting, one column per metric) as a second table. Values to 3 significant digits and no date column (the run's
    page has it): one table with every metric and column would not fit a 1500 px window."""
    metrics = metric_columns(rows)
    headline = [m for m in (*HEADLINE_FIRST, quality_metric) if m in metrics and rows[m].notna().any()]
    others = [m for m in metrics if m not in headline and rows[m].notna().any()]  # e.g. posterior_mae only when a run tracks one
    constant = {c: _format_value(rows[c].iloc[0]) for c in ("samples", "steps", "protocol", "provenance") if rows[c].nunique(dropna=False) == 1}
    columns = ["rank", "method", "setting", "safe", *headline, *[c for c in ("samples", "steps", "protocol", "provenance") if c not in constant]]
    view = _view_with_intervals(rows, columns, headline)
    view["run"] = [run_link(t, r) for t, r in zip(rows.task, rows.run_id)]
    return clean_cells(view), constant, clean_cells(_view_with_intervals(rows, ["rank", "method", "setting", *others], others))


def _view_with_intervals(rows: pd.DataFrame, columns: list[str], metrics: list[str]) -> pd.DataFrame:
    """`columns` of `rows`, the rank group as text and every metric as `value [95% interval]` to 3 significant digits."""
    view = rows[columns].reset_index(drop=True)
    view["rank"] = [rank_text(r) for r in rows["rank"]]
    for metric in metrics:
        view[metric] = [with_interval(v, *interval_of(r, metric), digits=3) for v, (_, r) in zip(rows[metric], rows.iterrows())]
    return view


def headline_paragraph(info: TaskInfo) -> str:
    """One paragraph (markdown) explaining how the task's leaderboard is ranked."""
    quality = info.quality_metric
    better = "highest" if higher_is_better(quality) else "lowest"
    return (
        f"**How this table is ranked.** A run is *safe* when the upper end of the 95% interval of its forbidden share "
        f"(the share of samples the judge puts in the removed class) is at most **{info.threshold:.1%}**, the task's "
        f"threshold, so a handful of samples cannot look safe by luck. Among safe runs the {better} **{quality}** ranks "
        f"first: {metric_description(quality)}. Runs whose 95% intervals of {quality} overlap share a rank (one plus the "
        f"number of runs entirely better). Runs above the threshold follow, safest first. The paper's comparison is at "
        f"matched safety: the table above it gives each method at its calibrated scale. Runs of a protocol (fixed samples, "
        f"steps, seed, sampler) are shown by default; `exploratory` runs satisfy none. Sample-based distances such "
        f"as FID are biased on few samples: compare runs of one protocol."
    )


# ---- curves -------------------------------------------------------------------------------

def curve_points(rows: pd.DataFrame, quality_metric: str) -> pd.DataFrame:
    """Points of the safety-vs-quality and safety-vs-KL curves, with 95% intervals: one line per method setting across scales."""
    columns = ["line", "method", "setting", "scale", "forbidden_rate", "forbidden_low", "forbidden_high", "kl_classes", "kl_low", "kl_high",
               "quality", "quality_low", "quality_high", "unguided", "samples", "run_id"]
    if rows.empty:
        return pd.DataFrame(columns=columns)

    def column(name: str) -> pd.Series | float:
        return rows[name] if name in rows else np.nan

    points = rows.assign(
        quality=column(quality_metric), quality_low=column(quality_metric + "__low"), quality_high=column(quality_metric + "__high"),
        kl_classes=column("kl_classes"), kl_low=column("kl_classes__low"), kl_high=column("kl_classes__high"),
        forbidden_rate=column("forbidden_rate"), forbidden_low=column("forbidden_rate__low"), forbidden_high=column("forbidden_rate__high"),
        unguided=rows.method == UNGUIDED,
    )
    if points.samples.nunique() > 1:  # different sample counts give different curves, not one zigzag
        points["line"] = points.line + " · " + points.samples.astype(str) + " samples"
    points.loc[points.unguided, "line"] = "unguided"
    return points[columns].sort_values(["line", "scale"]).reset_index(drop=True)


# ---- run detail ---------------------------------------------------------------------------

def ideal_shares(n_classes: int, removed: int | None, weights: Sequence[float] | None = None) -> np.ndarray:
    """The ideal class histogram: the data's weights (uniform if unknown) over kept classes, 0 for the removed one."""
    shares = np.asarray(weights, dtype=float) if weights is not None and len(weights) == n_classes else np.ones(n_classes)
    if removed is not None and 0 <= removed < n_classes:
        shares[removed] = 0.0
    return shares / shares.sum()


def class_shares(counts: pd.DataFrame) -> np.ndarray:
    """Generated class shares from a Store.class_counts frame."""
    values = counts.sort_values("class_index")["count"].to_numpy(dtype=float)
    return values / values.sum() if values.sum() > 0 else values


def trace_band(traces: pd.DataFrame, name: str) -> pd.DataFrame:
    """One traced quantity's mean and q05..q95 band per recorded step, in increasing t."""
    rows = traces[traces.name == name]
    return rows[["t", "mean", "q05", "q50", "q95"]].sort_values("t").reset_index(drop=True)


def provenance(row: pd.Series) -> dict:
    """Where a run came from and what it cost, for display (fields without a value are left out, never NaN)."""
    found = {
        "run_id": row.run_id, "task": f"{row.task} (version {row.task_version})", "method": row.method,
        "parameters": json.loads(row.params), "profile": row.profile, "protocol": row.get("protocol"), "sampler": _json_or_none(row.get("sampler")),
        "seed": int(row.seed), "samples": int(row.samples), "steps": int(row.steps), "sweep_id": row.sweep_id, "git_commit": row.git_commit,
        "status": row.status, "provenance": row.get("provenance"), "submitter": row.get("submitter"),
        "started_at": str(row.started_at), "finished_at": str(row.finished_at), "wall_seconds": round(float(row.wall_seconds), 2),
        "timings": _json_or_none(row.timings), "packages": _json_or_none(row.packages), "artifacts_dir": row.artifacts_dir,
    }
    return {k: v for k, v in found.items() if not is_missing(v) and v != {}}


def _json_or_none(text: object) -> object:
    return json.loads(text) if isinstance(text, str) and text else None


def is_missing(value: object) -> bool:
    """None, NaN, NaT or an empty string: a cell with nothing to show."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and dicts are values
        return False


def clean_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """A display copy of a table where every missing cell reads MISSING (numeric columns with gaps become text)."""
    frame = frame.copy()
    for column in frame.columns:
        missing = frame[column].map(is_missing)
        if missing.any():
            frame[column] = [MISSING if gap else (_format_value(v) if isinstance(v, float) else v) for v, gap in zip(frame[column], missing)]
    return frame


def load_samples(artifacts_dir: str | None) -> np.ndarray | None:
    """The run's stored samples (`x` of samples.npz), or None when absent or unreadable."""
    if not artifacts_dir:
        return None
    data = read_npz(Path(artifacts_dir) / "samples.npz")
    return None if data is None or "x" not in data else data["x"]


def grid_path(artifacts_dir: str | None) -> Path | None:
    path = Path(artifacts_dir) / "grid.png" if artifacts_dir else None
    return path if path is not None and path.is_file() else None


def kept_density(details: dict, removed: int | None, xs: np.ndarray) -> np.ndarray | None:
    """The 1D target density (mixture without the removed mode), when the task gives means, stds, weights."""
    try:
        means = np.asarray(details["means"], dtype=float)[:, 0]
        stds = np.asarray(details["stds"], dtype=float)
        weights = np.asarray(details["weights"], dtype=float).copy()
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if removed is not None and 0 <= removed < len(weights):
        weights[removed] = 0.0
    weights = weights / weights.sum()
    z = (xs[:, None] - means[None, :]) / stds[None, :]
    return (weights * np.exp(-0.5 * z**2) / (stds * np.sqrt(2 * np.pi))).sum(1)


# ---- compare ------------------------------------------------------------------------------

def default_pair(rows: pd.DataFrame) -> tuple[str, str]:
    """Run ids to compare first: the unguided run (else the second best) against the best ranked run."""
    ranked = by_rank(rows)
    best = ranked.iloc[0]
    unguided = ranked[(ranked.method == UNGUIDED) & (ranked.run_id != best.run_id)]
    same_seed = unguided[(unguided.seed == best.seed) & (unguided.samples == best.samples)]
    for candidates in (same_seed, unguided, ranked[ranked.run_id != best.run_id]):
        if not candidates.empty:
            return str(candidates.iloc[0].run_id), str(best.run_id)
    return str(best.run_id), str(best.run_id)


def changed_images(a: np.ndarray, b: np.ndarray, tolerance: float = 8.0) -> np.ndarray:
    """Per pair of uint8 images, whether the mean absolute pixel difference exceeds `tolerance` (of 255)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1).mean(1)
    return diff > tolerance


def framed(images: np.ndarray, highlight: np.ndarray, width: int = 2) -> np.ndarray:
    """RGB copies of uint8 N x C x H x W images with a red frame where `highlight`, white elsewhere."""
    rgb = np.repeat(images, 3, axis=1) if images.shape[1] == 1 else images[:, :3]
    out = np.full((len(rgb), 3, rgb.shape[2] + 2 * width, rgb.shape[3] + 2 * width), 255, dtype=np.uint8)
    out[highlight, 1:] = 0  # red: keep channel 0 at 255, zero green and blue
    out[:, :, width:-width, width:-width] = rgb
    return out


def compare_metrics(a: pd.Series, b: pd.Series, names: Sequence[str], paired: pd.DataFrame | None = None) -> pd.DataFrame:
    """Two runs' metrics with their intervals side by side, and B - A with its paired interval when it was computed."""
    rows = []
    for name in names:
        va, vb = float(a.get(name, np.nan)), float(b.get(name, np.nan))
        row = {"metric": name, "A [95% CI]": with_interval(va, *interval_of(a, name)), "B [95% CI]": with_interval(vb, *interval_of(b, name)),
               "B - A": vb - va, "paired 95% CI of B - A": ""}
        found = paired[paired.metric == name] if paired is not None and not paired.empty else None
        if found is not None and not found.empty:
            f = found.iloc[0]
            row["paired 95% CI of B - A"] = f"[{f.diff_low:.4g}, {f.diff_high:.4g}]" + (" *" if not f.diff_low <= 0 <= f.diff_high else "")
        rows.append(row)
    return pd.DataFrame(rows)


# ---- methods ------------------------------------------------------------------------------

def method_cards(store: Store) -> pd.DataFrame:
    """One card per method in the store: what it is (as its runs recorded it), who submitted it, how its runs were made."""
    runs = store.runs()
    if runs.empty:
        return pd.DataFrame(columns=["method", "summary", "predictions per step", "submitted by", "run here", "self-reported", "verified", "defaults"])
    rows = []
    for method, group in runs.groupby("method", sort=True):
        info = store.info("method_info", method)
        counts = group["provenance"].value_counts()
        rows.append({"method": method, "summary": info.get("summary", ""), "predictions per step": ", ".join(info.get("needs", [])),
                     "submitted by": info.get("submitter") or "", **{p: int(counts.get(p, 0)) for p in ("run here", "self-reported", "verified")},
                     "defaults": ", ".join(f"{k}={_format_value(v)}" for k, v in sorted(info.get("defaults", {}).items()))})
    return pd.DataFrame(rows)


# ---- ranks as groups ----------------------------------------------------------------------
# results.leaderboard gives a rank group as text ("1", "1-3") with integer `rank_best`/`rank_worst`;
# older versions gave one integer rank. These helpers read both.

def rank_text(rank: object) -> str:
    """A rank group as text: "1", "1-3" (an integral float reads as an integer, never "1.0")."""
    if is_missing(rank):
        return MISSING
    if isinstance(rank, (int, np.integer)) or (isinstance(rank, float) and rank.is_integer()):
        return str(int(rank))
    return str(rank)


def rank_bounds(rank: object) -> tuple[int, int]:
    """(best, worst) of a rank group given as an integer or as text "a" or "a-b"."""
    text = rank_text(rank)
    if text == MISSING:
        return 10**6, 10**6  # unranked rows sort last
    best, _, worst = text.partition("-")
    return int(best), int(worst or best)


def with_rank_bounds(frame: pd.DataFrame) -> pd.DataFrame:
    """`rank_best`/`rank_worst` columns, read from `rank` where the ranking did not add them."""
    if frame.empty or ("rank_best" in frame and "rank_worst" in frame):
        return frame
    bounds = [rank_bounds(r) for r in frame["rank"]]
    return frame.assign(rank_best=[b for b, _ in bounds], rank_worst=[w for _, w in bounds])


def by_rank(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in rank order (best group first; a stable sort keeps the ranking's order inside a group)."""
    if frame.empty:
        return frame
    return with_rank_bounds(frame).sort_values(["rank_best", "rank_worst"], kind="stable")


# ---- links --------------------------------------------------------------------------------
# Relative links (a query string only): they work behind any host name and path, and in the
# static site the same functions are not used (it links to files).

def page_link(page: str, **params: str) -> str:
    from urllib.parse import urlencode

    return "?" + urlencode({"page": page, **params})


def run_link(task: str, run_id: str) -> str:
    return page_link("Run detail", task=task, run=run_id)


def method_link(method: str) -> str:
    return page_link("Method", method=method)


def task_link(task: str) -> str:
    return page_link("Leaderboard", task=task)


def parse_run_link(link: str) -> str:
    """The run id of a run_link."""
    from urllib.parse import parse_qs, urlparse

    return parse_qs(urlparse(link).query)["run"][0]


SHORT_ID = r"run=([0-9a-zA-Z_-]{1,8})"  # the LinkColumn's display text: the run id's first 8 characters
METHOD_OF_LINK = r"method=([^&]+)"
TASK_OF_LINK = r"task=([^&]+)"


# ---- matched safety, every target ---------------------------------------------------------

def calibrated_targets(store: Store, task: str) -> list[float]:
    """The targets some method of the task is calibrated at (the leaderboard's own list when it has one)."""
    listed = getattr(leaderboard, "calibrated_targets", None)
    if listed is not None:
        return [float(t) for t in listed(store, task)]
    calibrations = store.calibrations(task)
    return sorted({round(float(t), 12) for t in calibrations["target"]}) if not calibrations.empty else []


def preferred_target(targets: Sequence[float], threshold: float | None = None) -> float | None:
    """The target shown first: the task's threshold if calibrated, else the default target, else the smallest."""
    for wanted in (threshold, DEFAULT_TARGET):
        if wanted is not None and any(np.isclose(t, wanted) for t in targets):
            return next(t for t in targets if np.isclose(t, wanted))
    return min(targets) if targets else None


def target_label(target: float) -> str:
    return f"{100 * target:.3g}%"


def matched(store: Store, task: str, target: float) -> pd.DataFrame:
    """matched_safety_table with rank bounds, in rank order (empty when nothing is calibrated at `target`)."""
    table = matched_safety_table(store, task, target)
    return by_rank(table) if not table.empty else table


def fixed_params_label(method: str, params_json: object, defaults: dict) -> str:
    """A calibration's fixed parameters that differ from the method's defaults ("" when none)."""
    params = json.loads(params_json) if isinstance(params_json, str) and params_json else {}
    return other_params_label(params, defaults) if method != UNGUIDED else ""


def matched_view(table: pd.DataFrame, quality: str, defaults: Mapping[str, dict]) -> pd.DataFrame:
    """The matched-safety table as shown: rank group, method, changed parameters, scale, metrics with intervals, run link."""
    if table.empty:
        return pd.DataFrame(columns=["rank", "method", "setting", "scale", quality, "forbidden share", "KL", "samples", "monotone", "run"])
    view = pd.DataFrame({
        "rank": [rank_text(r) for r in table["rank"]], "method": table["method"],
        "setting": [fixed_params_label(m, p, defaults.get(m, {})) for m, p in zip(table["method"], table["params"])],
        "scale": [f"{s:.4g}" for s in table["scale"]],
        quality: _with_intervals(table, quality),
        "forbidden share": _with_intervals(table, "forbidden_rate"),
        "KL": _with_intervals(table, "kl_classes"),
        "samples": table["samples"].astype(int), "monotone": ["yes" if m else "no" for m in table["monotone"]],
        "run": [run_link(t, r) for t, r in zip(table["task"], table["run_id"])],
    })
    if not view["setting"].astype(bool).any():
        view = view.drop(columns=["setting"])  # every method at its defaults: nothing to say
    return clean_cells(view)


def _with_intervals(table: pd.DataFrame, metric: str) -> list[str]:
    if metric not in table:
        return [MISSING] * len(table)
    return [with_interval(v, lo, hi) for v, lo, hi in zip(table[metric], table.get(metric + "__low", np.nan), table.get(metric + "__high", np.nan))]


def method_defaults(store: Store, methods: Sequence[str]) -> dict[str, dict]:
    return {m: store.info("method_info", m).get("defaults", {}) for m in methods}


def targets_at_a_glance(tables: Mapping[float, pd.DataFrame], quality: str) -> pd.DataFrame:
    """Methods down, calibrated targets across: quality [95% CI] (rank group) at each target."""
    cells: dict[str, dict[str, str]] = {}
    for target, table in sorted(tables.items()):
        for _, row in table.iterrows():
            cells.setdefault(row.method, {})[f"≤ {target_label(target)}"] = (
                f"{with_interval(row[quality], *interval_of(row, quality))} #{rank_text(row['rank'])}")
    frame = pd.DataFrame.from_dict(cells, orient="index").rename_axis("method").reset_index()
    return clean_cells(frame)


# ---- the overview across tasks (HELM-style summary) ---------------------------------------

OVERVIEW_COLUMNS = ["task", "method", "quality_metric", "value", "low", "high", "lower_is_better", "rank", "rank_best", "rank_worst",
                    "scale", "forbidden_rate", "run_id"]


def overview_rows(store: Store, tasks: Sequence[str], target: float) -> pd.DataFrame:
    """Each method's headline on each task at `target` (one row per task and method), with its interval and rank group."""
    rows = []
    for task in tasks:
        if not any(np.isclose(t, target) for t in calibrated_targets(store, task)):
            continue
        table = matched(store, task, target)
        quality, _ = headline_of(store, task)
        for _, r in table.iterrows():
            low, high = interval_of(r, quality)
            rows.append({"task": task, "method": r.method, "quality_metric": quality, "value": float(r[quality]), "low": low,
                         "high": high, "lower_is_better": not higher_is_better(quality), "rank": rank_text(r["rank"]),
                         "rank_best": int(r.rank_best), "rank_worst": int(r.rank_worst), "scale": float(r.scale),
                         "forbidden_rate": float(r.forbidden_rate), "run_id": r.run_id})
    return pd.DataFrame(rows, columns=OVERVIEW_COLUMNS)


def _beats(a: pd.Series, b: pd.Series) -> bool:
    """Whether a's 95% interval lies entirely on the better side of b's (missing intervals: the value)."""
    a_low, a_high = (a.low if a.low == a.low else a.value), (a.high if a.high == a.high else a.value)
    b_low, b_high = (b.low if b.low == b.low else b.value), (b.high if b.high == b.high else b.value)
    return a_high < b_low if a.lower_is_better else a_low > b_high


def win_rates(rows: pd.DataFrame) -> pd.Series:
    """HELM's mean win rate with intervals: per task, the share of the other methods a method beats (interval entirely
    better; an overlap counts half), averaged over the tasks where it has an opponent."""
    per_task: dict[str, list[float]] = {}
    for _, group in rows.groupby("task"):
        if len(group) < 2:
            continue
        for _, a in group.iterrows():
            others = [b for _, b in group.iterrows() if b.method != a.method]
            wins = sum(1.0 if _beats(a, b) else 0.0 if _beats(b, a) else 0.5 for b in others)
            per_task.setdefault(a.method, []).append(wins / len(others))
    return pd.Series({m: float(np.mean(v)) for m, v in per_task.items()}, dtype=float)


def overview_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per method: tasks calibrated, mean rank (a group's midpoint), mean win rate; best first."""
    if rows.empty:
        return pd.DataFrame(columns=["method", "tasks", "mean rank", "win rate", "page"])
    rates = win_rates(rows)
    summary = (rows.assign(mid=(rows.rank_best + rows.rank_worst) / 2).groupby("method")
               .agg(tasks=("task", "nunique"), mean_rank=("mid", "mean")).reset_index())
    summary["win_rate"] = summary.method.map(rates)
    summary = summary.sort_values(["win_rate", "mean_rank"], ascending=[False, True], na_position="last")
    return clean_cells(pd.DataFrame({
        "method": summary.method, "tasks": summary.tasks, "mean rank": [f"{v:.2f}" for v in summary.mean_rank],
        "win rate": [f"{v:.0%}" if v == v else MISSING for v in summary.win_rate], "page": [method_link(m) for m in summary.method]}))


def overview_grid(rows: pd.DataFrame, order: Sequence[str] = ()) -> pd.DataFrame:
    """Methods down, tasks across: each cell the headline `value [low, high] #rank`; rows in `order` (the summary's)."""
    if rows.empty:
        return pd.DataFrame(columns=["method"])
    cells: dict[str, dict[str, str]] = {}
    for r in rows.itertuples():
        arrow = "↓" if r.lower_is_better else "↑"
        cells.setdefault(r.method, {})[f"{r.task} · {r.quality_metric} {arrow}"] = f"{with_interval(r.value, r.low, r.high)} #{r.rank}"
    grid = pd.DataFrame.from_dict(cells, orient="index")
    grid = grid[sorted(grid.columns)]
    methods = [m for m in order if m in grid.index] + sorted(m for m in grid.index if m not in order)
    grid = grid.loc[methods].rename_axis("method").reset_index()
    return clean_cells(grid)


def overview_targets(store: Store, tasks: Sequence[str]) -> list[float]:
    """Targets calibrated on any task, those covering the most tasks first (then the default target, then smaller)."""
    coverage: dict[float, int] = {}
    for task in tasks:
        for target in calibrated_targets(store, task):
            key = next((k for k in coverage if np.isclose(k, target)), target)
            coverage[key] = coverage.get(key, 0) + 1
    return sorted(coverage, key=lambda t: (-coverage[t], not np.isclose(t, DEFAULT_TARGET), t))


# ---- one method across tasks --------------------------------------------------------------

def method_runs(board: pd.DataFrame, method: str, qualities: Mapping[str, str]) -> pd.DataFrame:
    """The method's runs on every task, best ranked first within each task (display columns, run links)."""
    rows = board[board.method == method]
    if rows.empty:
        return pd.DataFrame(columns=["task", "rank", "setting", "safe", "forbidden share", "quality [95% CI]", "samples", "date", "run"])
    rows = by_rank(rows).sort_values("task", kind="stable")
    view = pd.DataFrame({
        "task": rows.task, "rank": [rank_text(r) for r in rows["rank"]], "setting": rows.setting, "safe": rows.safe,
        "forbidden share": _with_intervals(rows, "forbidden_rate"),
        "quality [95% CI]": [f"{qualities.get(r.task, 'fid')} {with_interval(r.get(qualities.get(r.task, 'fid')), *interval_of(r, qualities.get(r.task, 'fid')))}"
                             for _, r in rows.iterrows()],
        "samples": rows.samples.astype(int), "date": rows.date.str[:10], "run": [run_link(t, r) for t, r in zip(rows.task, rows.run_id)],
    })
    return clean_cells(view.reset_index(drop=True))


def method_headlines(store: Store, tasks: Sequence[str], method: str) -> pd.DataFrame:
    """The method's matched-safety headline on every task and calibrated target: quality [CI], rank group among the methods."""
    rows = []
    for task in tasks:
        quality, _ = headline_of(store, task)
        for target in calibrated_targets(store, task):
            table = matched(store, task, target)
            for _, r in table[table.method == method].iterrows():
                rows.append({"task": task, "target": f"≤ {target_label(target)}", "quality metric": quality,
                             "value [95% CI]": with_interval(r[quality], *interval_of(r, quality)),
                             "rank": f"{rank_text(r['rank'])} of {len(table)}", "scale": f"{r.scale:.4g}",
                             "forbidden share": with_interval(r.forbidden_rate, *interval_of(r, "forbidden_rate")),
                             "run": run_link(task, r.run_id)})
    return clean_cells(pd.DataFrame(rows, columns=["task", "target", "quality metric", "value [95% CI]", "rank", "scale", "forbidden share", "run"]))


# ---- downloads ----------------------------------------------------------------------------

BULKY_FIELDS = ("config", "packages", "timings", "digests")  # JSON blobs: in the run's own page, not in every row


def downloadable(frame: pd.DataFrame) -> pd.DataFrame:
    """A table as downloaded: every column but the bulky JSON ones, timestamps as ISO text."""
    frame = frame.drop(columns=[c for c in BULKY_FIELDS if c in frame])
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = frame[column].astype(str)
    return frame.reset_index(drop=True)


def parameters_view(row: pd.Series, defaults: Mapping[str, object] | None = None) -> pd.DataFrame:
    """The run's full parameters with the method's defaults beside them (the sampler's settings too)."""
    params = json.loads(row.params) if isinstance(row.params, str) else {}
    defaults = defaults or {}
    rows = [{"parameter": k, "value": _format_value(v), "default": _format_value(defaults[k]) if k in defaults else MISSING}
            for k, v in sorted(params.items())]
    sampler = _json_or_none(row.get("sampler"))
    if isinstance(sampler, dict):
        settings = ", ".join(f"{k}={_format_value(v)}" for k, v in sorted(sampler.get("settings", {}).items()))
        rows.append({"parameter": "sampler", "value": f"{sampler.get('name')}" + (f" ({settings})" if settings else ""), "default": MISSING})
    return pd.DataFrame(rows, columns=["parameter", "value", "default"])


def tasks_view(board: pd.DataFrame) -> pd.DataFrame:
    """One row per task: its runs, methods and a link to its leaderboard."""
    groups = board.groupby("task", sort=True)
    return pd.DataFrame({"task": list(groups.groups), "runs": groups.size().to_list(), "methods": groups.method.nunique().to_list(),
                         "leaderboard": [task_link(t) for t in groups.groups]})
