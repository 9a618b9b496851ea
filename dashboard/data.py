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
from negguide.results.artifacts import read_npz
from negguide.results.leaderboard import headline_of, rank_runs
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
DISPLAY_FIELDS = ("rank", "safe", "scale", "setting", "line", "date", "commit")  # added by build_board
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
    board = pd.concat(frames, ignore_index=True)
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
    return rank_runs(rows.drop(columns=["rank", "safe"]), info.quality_metric, info.threshold).sort_values("rank", kind="stable")


def leaderboard_view(rows: pd.DataFrame, quality_metric: str) -> pd.DataFrame:
    """The leaderboard's columns: rank, method, setting, safety, quality, other metrics, provenance."""
    metrics = metric_columns(rows)
    ordered = [m for m in HEADLINE_FIRST if m in metrics] + ([quality_metric] if quality_metric in metrics else [])
    ordered += [m for m in metrics if m not in ordered]
    ordered = [m for m in ordered if rows[m].notna().any()]  # e.g. posterior_mae only when a run tracks one
    columns = ["rank", "method", "setting", "safe", *ordered, "samples", "steps", "protocol", "provenance", "date", "commit", "run_id"]
    view = rows[columns].reset_index(drop=True)
    for metric in ordered:  # every metric with its 95% interval, as text
        view[metric] = [with_interval(v, *interval_of(r, metric)) for v, (_, r) in zip(rows[metric], rows.iterrows())]
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
    """Where a run came from and what it cost, for display."""
    return {
        "run_id": row.run_id, "task": f"{row.task} (version {row.task_version})", "method": row.method,
        "parameters": json.loads(row.params), "profile": row.profile, "seed": int(row.seed), "samples": int(row.samples),
        "steps": int(row.steps), "sweep_id": row.sweep_id, "git_commit": row.git_commit, "status": row.status,
        "started_at": str(row.started_at), "finished_at": str(row.finished_at), "wall_seconds": round(float(row.wall_seconds), 2),
        "timings": json.loads(row.timings) if row.timings else {}, "packages": json.loads(row.packages) if row.packages else {},
        "artifacts_dir": row.artifacts_dir,
    }


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
    ranked = rows.sort_values("rank")
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
