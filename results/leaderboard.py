"""The leaderboard's ranking, shared by `bench leaderboard` and the dashboard.

Two tables per task:
- matched safety (the headline, the paper's comparison): per method and calibrated target, its
  calibrated run — the smallest scale that is safe at the target (`bench calibrate`) — ranked by the
  task's quality metric.
- all runs: protocol runs by default (exploratory ones on request). Safe runs come first,
  ranked by quality, then the rest, safest first.

One meaning of safe everywhere: the upper end of the forbidden share's 95% Wilson interval is at most
the target (or the task's threshold). Ranks are groups, the way overlapping intervals are read: an
entry's rank is the range from its best possible rank (1 + the entries entirely better) to its worst
possible one (the entries not entirely worse), "1", "1-3", "4-7"; `rank_best` and `rank_worst`
hold the two ends as integers for sorting.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from negguide.metrics.base import METRICS
from negguide.metrics.intervals import with_interval
from negguide.results.store import UPPER95, Store

DEFAULT_TARGET = 0.01
COLUMNS = ["rank", "rank_best", "rank_worst", "task", "method", "params", "params_changed", "protocol", "provenance", "safe",
           "forbidden_rate", "kl_classes"]


def _short_params(text: str) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(json.loads(text).items()))


def _same_value(value: object, default: object) -> bool:
    if isinstance(value, (int, float)) and isinstance(default, (int, float)) and not isinstance(value, bool):
        return bool(np.isclose(float(value), float(default), rtol=1e-9, atol=0.0))
    return value == default


def changed_params(params: dict, defaults: dict) -> dict:
    """The parameters that differ from the method's defaults (all of them when the defaults are unknown)."""
    return {k: v for k, v in sorted(params.items()) if k not in defaults or not _same_value(v, defaults[k])}


def params_text(params: str | dict, defaults: dict) -> str:
    """`k=v, ...` of the parameters that differ from `defaults`; "" when none differ."""
    values = json.loads(params) if isinstance(params, str) else params
    return ", ".join(f"{k}={v}" for k, v in changed_params(values, defaults).items())


def changed_params_column(store: Store, methods: pd.Series, params: pd.Series) -> list[str]:
    """params_text per row, with each method's defaults as its runs recorded them (read once per method)."""
    defaults = {method: store.info("method_info", method).get("defaults", {}) for method in set(methods)}
    return [params_text(p, defaults[m]) for m, p in zip(methods, params)]


def safe_at(upper: float, target: float) -> bool:
    """The one meaning of safe: the upper end of the forbidden share's 95% interval is at most the target."""
    return bool(upper <= target)


def lower_is_better(metric: str) -> bool:
    return not METRICS[metric].higher_is_better if metric in METRICS else True


def rank_groups(values: pd.Series, lows: pd.Series, highs: pd.Series, lower_better: bool) -> list[tuple[int, int]]:
    """(best, worst) possible rank of each entry: best = 1 + the entries entirely better, worst = n - the entries
    entirely worse; "entirely" means the 95% intervals do not overlap (missing intervals: the value)."""
    lows, highs = lows.fillna(values).to_numpy(float), highs.fillna(values).to_numpy(float)
    if not lower_better:  # flip so that smaller is better
        lows, highs = -highs, -lows
    n = len(lows)
    return [(1 + int(np.sum(highs < low)), n - int(np.sum(lows > high))) for low, high in zip(lows, highs)]


def rank_text(best: int, worst: int) -> str:
    """"3" or "1-3": never fractional."""
    return str(best) if best == worst else f"{best}-{worst}"


def _with_ranks(rows: pd.DataFrame, groups: list[tuple[int, int]], offset: int = 0) -> pd.DataFrame:
    rows["rank_best"] = [offset + best for best, _ in groups]
    rows["rank_worst"] = [offset + worst for _, worst in groups]
    rows["rank"] = [rank_text(best, worst) for best, worst in zip(rows["rank_best"], rows["rank_worst"])]
    return rows


def _interval_columns(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    for suffix in ("", "__low", "__high"):
        if metric + suffix not in runs:
            runs[metric + suffix] = float("nan")
    return runs


def rank_runs(runs: pd.DataFrame, quality_metric: str, threshold: float) -> pd.DataFrame:
    """Rows of one task ordered by the headline; adds `safe`, the rank group `rank` ("1-3") and its ends `rank_best`, `rank_worst`."""
    runs = _interval_columns(_interval_columns(runs.copy(), "forbidden_rate"), quality_metric)
    upper = runs["forbidden_rate__high"].fillna(runs["forbidden_rate"])
    runs["safe"] = [safe_at(high, threshold) for high in upper]
    lower_better = lower_is_better(quality_metric)
    safe = runs[runs.safe].sort_values([quality_metric, "forbidden_rate"], ascending=[lower_better, True], na_position="last")
    unsafe = runs[~runs.safe].sort_values(["forbidden_rate", quality_metric], na_position="last")
    safe = _with_ranks(safe, rank_groups(safe[quality_metric], safe[quality_metric + "__low"], safe[quality_metric + "__high"], lower_better))
    unsafe = _with_ranks(unsafe, rank_groups(unsafe["forbidden_rate"], unsafe["forbidden_rate__low"], unsafe["forbidden_rate__high"], True), len(safe))
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
    """All tasks' ranked runs with their metrics (protocol runs only unless `exploratory`), one row per stored run; each metric
    as text with its interval (`intervals_as_text`) or as a number beside `<metric>__low` and `<metric>__high`."""
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
    table["rank_best"], table["rank_worst"] = table["rank_best"].astype(int), table["rank_worst"].astype(int)
    table["params_changed"] = changed_params_column(store, table["method"], table["params"])
    table["params_json"] = table["params"]
    table["params"] = table["params"].map(_short_params)
    table["protocol"] = table["protocol"].fillna("exploratory")
    table["date"] = pd.to_datetime(table["finished_at"]).dt.strftime("%Y-%m-%d %H:%M")
    table["commit"] = table["git_commit"].fillna("").str[:8]
    metric_columns = [c for c in ("fid", "fid_classifier", "wasserstein", "posterior_mae", "clip_related", "clip_unrelated", "q") if c in table]
    shown = ["forbidden_rate", "kl_classes", *metric_columns]
    for metric in shown:
        _interval_columns(table, metric)
    bounds = [] if intervals_as_text else [f"{m}{suffix}" for m in shown for suffix in ("__low", "__high")]
    if intervals_as_text:
        table = _display(table, shown)
    return table[COLUMNS + metric_columns + ["samples", "steps", "date", "commit", "run_id", "params_json"] + bounds]


def _protocol_sampler(sampler_json: object) -> bool:
    """Whether a stored run used DDPM, the sampler of every protocol (rows from before samplers have none)."""
    return not isinstance(sampler_json, str) or json.loads(sampler_json).get("name") == "ddpm"


def calibrated_targets(store: Store, task: str) -> list[float]:
    """The targets with at least one stored calibration on `task`, smallest first (each heads a matched-safety table)."""
    calibrations = store.calibrations(task)
    targets: list[float] = []
    for target in sorted(float(t) for t in calibrations["target"]):
        if not targets or not np.isclose(target, targets[-1]):
            targets.append(target)
    return targets


def matched_safety_table(store: Store, task: str, target: float = DEFAULT_TARGET) -> pd.DataFrame:
    """Per method, its newest calibrated run at `target` under the protocols' sampler (DDPM), ranked by quality
    in rank groups. A calibration under the upper-bound rule replaces one made under the old point-estimate
    rule (`rule` says which made each row: "upper95" or "point"). A calibration under another sampler (DDIM,
    DPM-Solver++, ...) never replaces it in the headline: those are compared on docs/results/samplers.md."""
    calibrations = store.calibrations(task)
    if calibrations.empty:
        return calibrations
    chosen = calibrations[np.isclose(calibrations["target"], target)]
    if chosen.empty:
        return chosen
    wide = store.wide(task, intervals=True)
    quality, _ = headline_of(store, task)
    chosen = chosen.assign(newer_rule=chosen["rule"] == UPPER95).sort_values(["newer_rule", "created_at"], kind="stable")
    rows = chosen[["method", "params", "scale", "run_id", "monotone", "rule"]].merge(wide.drop(columns=["method", "params"]), on="run_id", how="inner")
    rows = rows[[_protocol_sampler(text) for text in rows["sampler"]]].drop_duplicates(["method", "params"], keep="last")
    rows = _interval_columns(_interval_columns(_interval_columns(rows, quality), "forbidden_rate"), "kl_classes")
    lower_better = lower_is_better(quality)
    rows = rows.sort_values(quality, ascending=lower_better, na_position="last")
    rows = _with_ranks(rows, rank_groups(rows[quality], rows[quality + "__low"], rows[quality + "__high"], lower_better))
    rows["params_changed"] = changed_params_column(store, rows["method"], rows["params"])
    rows["safe"] = [safe_at(high, target) for high in rows["forbidden_rate__high"].fillna(rows["forbidden_rate"])]
    rows["target"] = target
    rows["quality_metric"] = quality
    return rows


# One row of `bench leaderboard --json/--csv` (docs/trust.md, "The leaderboard as data"): these fields, then per metric
# `<metric>`, `<metric>_low`, `<metric>_high` (null where there is no value or interval).
RECORD_FIELDS = ("table", "task", "target", "rank", "rank_best", "rank_worst", "method", "params", "params_changed", "scale", "protocol",
                 "provenance", "safe", "rule", "quality_metric", "samples", "steps", "date", "run_id")


def _plain(value: object) -> object:
    """JSON-ready: NaN and missing become None, numpy scalars Python ones."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


def metric_names(frame: pd.DataFrame) -> list[str]:
    """The metrics of a ranked table: the columns that carry `__low` and `__high` beside them."""
    return [c for c in frame.columns if not c.endswith(("__low", "__high")) and f"{c}__low" in frame and f"{c}__high" in frame]


def table_records(frame: pd.DataFrame, table: str, quality_metric: str, target: float | None = None) -> list[dict]:
    """Rows of a ranked table (matched_safety_table or leaderboard_table without text intervals) as RECORD_FIELDS + metrics."""
    metrics = metric_names(frame)
    found = []
    for row in frame.to_dict("records"):
        params = row.get("params_json", row.get("params"))
        record = {"table": table, "task": row.get("task"), "target": target, "rank": row["rank"], "rank_best": int(row["rank_best"]),
                  "rank_worst": int(row["rank_worst"]), "method": row["method"],
                  "params": json.loads(params) if isinstance(params, str) and params.startswith("{") else params,
                  "params_changed": row.get("params_changed", ""), "scale": row.get("scale"), "protocol": row.get("protocol"),
                  "provenance": row.get("provenance"), "safe": bool(row["safe"]), "rule": row.get("rule"), "quality_metric": quality_metric,
                  "samples": row.get("samples"), "steps": row.get("steps"), "date": row.get("date"), "run_id": row.get("run_id")}
        if record["date"] is None and row.get("finished_at") is not None:
            record["date"] = pd.Timestamp(row["finished_at"]).strftime("%Y-%m-%d %H:%M")
        if not isinstance(record["protocol"], str) or record["protocol"] == "exploratory":
            record["protocol"] = None  # null: exploratory, as in `bench runs --json`
        for metric in metrics:
            record[metric], record[f"{metric}_low"], record[f"{metric}_high"] = row[metric], row[f"{metric}__low"], row[f"{metric}__high"]
        found.append({key: _plain(value) for key, value in record.items()})
    return found


def leaderboard_records(store: Store, task: str | None = None, exploratory: bool = False, target: float | None = None) -> list[dict]:
    """Every row `bench leaderboard` prints, as plain records: per task the matched-safety rows of each calibrated target
    (or only `target`), then the ranked runs."""
    runs = leaderboard_table(store, task, exploratory=exploratory)
    tasks = sorted(set(runs["task"]) if not runs.empty else set()) if task is None else [task]
    if task is None:
        calibrations = store.calibrations()
        tasks = sorted(set(tasks) | set(calibrations["task"]))
    records: list[dict] = []
    for name in tasks:
        quality, _ = headline_of(store, name)
        for each in ([target] if target is not None else calibrated_targets(store, name)):
            matched = matched_safety_table(store, name, each)
            if not matched.empty:
                records += table_records(matched.assign(task=name), "matched", quality, each)
        if not runs.empty:
            records += table_records(runs[runs["task"] == name], "runs", quality)
    return records
