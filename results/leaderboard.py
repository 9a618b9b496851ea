"""The leaderboard's ranking, shared by `bench leaderboard` and the dashboard.

Headline (class removal, the paper's high-safety regime): among runs whose forbidden_rate is at
most the task's threshold, the best quality metric (FID, or Wasserstein on exact tasks) wins;
runs above the threshold follow, safest first.
"""
from __future__ import annotations

import json

import pandas as pd

from negguide.metrics.base import METRICS
from negguide.results.store import Store

COLUMNS = ["rank", "task", "method", "params", "safe", "forbidden_rate", "kl_classes"]


def _short_params(text: str) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(json.loads(text).items()))


def rank_runs(runs: pd.DataFrame, quality_metric: str, threshold: float) -> pd.DataFrame:
    """Rows of one task ordered by the headline; adds `safe` and `rank`."""
    runs = runs.copy()
    if "forbidden_rate" not in runs:
        runs["forbidden_rate"] = float("nan")
    if quality_metric not in runs:
        runs[quality_metric] = float("nan")
    runs["safe"] = runs["forbidden_rate"] <= threshold
    lower_is_better = not METRICS[quality_metric].higher_is_better if quality_metric in METRICS else True
    safe = runs[runs.safe].sort_values([quality_metric, "forbidden_rate"], ascending=[lower_is_better, True], na_position="last")
    unsafe = runs[~runs.safe].sort_values(["forbidden_rate", quality_metric], na_position="last")
    ranked = pd.concat([safe, unsafe])
    ranked["rank"] = range(1, len(ranked) + 1)
    return ranked


def headline_of(store: Store, task_name: str) -> tuple[str, float]:
    """The task's quality metric and safety threshold, as its runs recorded them (defaults for older stores)."""
    info = store.info("task_info", task_name)
    return info.get("quality_metric", "fid"), float(info.get("safety_threshold", 0.02))


def leaderboard_table(store: Store, task: str | None = None) -> pd.DataFrame:
    """All tasks' ranked runs with their metrics, one row per stored run."""
    wide = store.wide(task)
    if wide.empty:
        return wide
    frames = []
    for task_name, runs in wide.groupby("task", sort=True):
        quality, threshold = headline_of(store, task_name)
        frames.append(rank_runs(runs, quality, threshold))
    table = pd.concat(frames)
    table["params"] = table["params"].map(_short_params)
    table["date"] = pd.to_datetime(table["finished_at"]).dt.strftime("%Y-%m-%d %H:%M")
    table["commit"] = table["git_commit"].fillna("").str[:8]
    metric_columns = [c for c in ("fid", "fid_classifier", "wasserstein", "posterior_mae", "clip_related", "clip_unrelated", "q") if c in table]
    return table[COLUMNS + metric_columns + ["samples", "steps", "date", "commit", "run_id"]]
