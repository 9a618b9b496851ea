"""The leaderboard's ranking, shared by `bench leaderboard` and the dashboard.

Two tables per task:
- matched safety (the headline, the paper's comparison): per method, its calibrated run — the
  smallest scale whose forbidden share is at most the target (default 1%, `bench calibrate`) — ranked
  by the task's quality metric. Entries whose 95% intervals overlap share a rank: an entry's rank is
  one plus the number of entries whose interval lies entirely on the better side of its own.
- all runs: protocol runs by default (exploratory ones on request). A run is *safe* when the upper
  end of its forbidden share's interval is at most the task's threshold; safe runs come first,
  ranked by quality with shared ranks, then the rest, safest first.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from negguide.metrics.base import METRICS
from negguide.metrics.intervals import with_interval
from negguide.results.store import Store

DEFAULT_TARGET = 0.01
COLUMNS = ["rank", "task", "method", "params", "protocol", "provenance", "safe", "forbidden_rate", "kl_classes"]


def _short_params(text: str) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(json.loads(text).items()))


def lower_is_better(metric: str) -> bool:
    return not METRICS[metric].higher_is_better if metric in METRICS else True


def shared_ranks(values: pd.Series, lows: pd.Series, highs: pd.Series, lower_better: bool) -> list[int]:
    """1 + the number of entries whose interval lies entirely on the better side (missing intervals: the value)."""
    lows, highs = lows.fillna(values).to_numpy(float), highs.fillna(values).to_numpy(float)
    if lower_better:
        return [1 + int(np.sum(highs < low)) for low in lows]
    return [1 + int(np.sum(lows > high)) for high in highs]


def _interval_columns(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    for suffix in ("", "__low", "__high"):
        if metric + suffix not in runs:
            runs[metric + suffix] = float("nan")
    return runs


def rank_runs(runs: pd.DataFrame, quality_metric: str, threshold: float) -> pd.DataFrame:
    """Rows of one task ordered by the headline; adds `safe` and a shared `rank`."""
    runs = _interval_columns(_interval_columns(runs.copy(), "forbidden_rate"), quality_metric)
    upper = runs["forbidden_rate__high"].fillna(runs["forbidden_rate"])
    runs["safe"] = upper <= threshold
    lower_better = lower_is_better(quality_metric)
    safe = runs[runs.safe].sort_values([quality_metric, "forbidden_rate"], ascending=[lower_better, True], na_position="last")
    unsafe = runs[~runs.safe].sort_values(["forbidden_rate", quality_metric], na_position="last")
    safe["rank"] = shared_ranks(safe[quality_metric], safe[quality_metric + "__low"], safe[quality_metric + "__high"], lower_better)
    unsafe["rank"] = [len(safe) + r for r in shared_ranks(unsafe["forbidden_rate"], unsafe["forbidden_rate__low"], unsafe["forbidden_rate__high"], True)]
    return pd.concat([safe, unsafe])


def headline_of(store: Store, task_name: str) -> tuple[str, float]:
    """The task's quality metric and safety threshold, as its runs recorded them (defaults for older stores)."""
    info = store.info("task_info", task_name)
    return info.get("quality_metric", "fid"), float(info.get("safety_threshold", 0.02))


def _display(table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    table = table.copy()
    for metric in metrics:
        low, high = table[metric + "__low"], table[metric + "__high"]
        table[metric] = [with_interval(v, lo, hi) for v, lo, hi in zip(table[metric], low, high)]
    return table


def leaderboard_table(store: Store, task: str | None = None, exploratory: bool = False, intervals_as_text: bool = False) -> pd.DataFrame:
    """All tasks' ranked runs with their metrics (protocol runs only unless `exploratory`), one row per stored run."""
    wide = store.wide(task, intervals=True)
    if not exploratory and not wide.empty:
        wide = wide[wide["protocol"].notna()]
    if wide.empty:
        return wide
    frames = []
    for task_name, runs in wide.groupby("task", sort=True):
        quality, threshold = headline_of(store, task_name)
        frames.append(rank_runs(runs, quality, threshold))
    table = pd.concat(frames)
    table["rank"] = table["rank"].astype(int)
    table["params"] = table["params"].map(_short_params)
    table["protocol"] = table["protocol"].fillna("exploratory")
    table["date"] = pd.to_datetime(table["finished_at"]).dt.strftime("%Y-%m-%d %H:%M")
    table["commit"] = table["git_commit"].fillna("").str[:8]
    metric_columns = [c for c in ("fid", "fid_classifier", "wasserstein", "posterior_mae", "clip_related", "clip_unrelated", "q") if c in table]
    shown = ["forbidden_rate", "kl_classes", *metric_columns]
    for metric in shown:
        _interval_columns(table, metric)
    if intervals_as_text:
        table = _display(table, shown)
    return table[COLUMNS + metric_columns + ["samples", "steps", "date", "commit", "run_id"]]


def _protocol_sampler(sampler_json: object) -> bool:
    """Whether a stored run used DDPM, the sampler of every protocol (rows from before samplers have none)."""
    return not isinstance(sampler_json, str) or json.loads(sampler_json).get("name") == "ddpm"


def matched_safety_table(store: Store, task: str, target: float = DEFAULT_TARGET) -> pd.DataFrame:
    """Per method, its newest calibrated run at `target` under the protocols' sampler (DDPM), ranked by quality
    with shared ranks. A calibration under another sampler (DDIM, DPM-Solver++, ...) never replaces it in the
    headline: those are compared on docs/results/samplers.md."""
    calibrations = store.calibrations(task)
    if calibrations.empty:
        return calibrations
    chosen = calibrations[np.isclose(calibrations["target"], target)]
    if chosen.empty:
        return chosen
    wide = store.wide(task, intervals=True)
    quality, _ = headline_of(store, task)
    rows = chosen[["method", "params", "scale", "run_id", "monotone"]].merge(wide.drop(columns=["method", "params"]), on="run_id", how="inner")
    rows = rows[[_protocol_sampler(text) for text in rows["sampler"]]].drop_duplicates(["method", "params"], keep="last")
    rows = _interval_columns(_interval_columns(_interval_columns(rows, quality), "forbidden_rate"), "kl_classes")
    lower_better = lower_is_better(quality)
    rows = rows.sort_values(quality, ascending=lower_better, na_position="last")
    rows["rank"] = shared_ranks(rows[quality], rows[quality + "__low"], rows[quality + "__high"], lower_better)
    rows["target"] = target
    rows["quality_metric"] = quality
    return rows
