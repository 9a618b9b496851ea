"""Recompute a store's stored intervals in place from each run's per-sample records.

Every interval is a function of the records saved beside the samples (records.npz, traces.npz), so
a change of interval method (metrics/intervals.py) reaches old runs without drawing a sample again.
The task-specific part, turning a run's row into its statistics, is passed in (`StatisticsOf`): the
store never imports the harness. Values are not rewritten; a recomputed value that differs from the
stored one beyond a relative 1e-9 is reported, as it means the records no longer explain the run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from negguide.methods.errors import BenchError
from negguide.metrics.intervals import Statistic, paired_difference
from negguide.results.store import Store

StatisticsOf = Callable[[dict], dict[str, Statistic]]  # a run's row (as stored) -> its metrics as statistics of its records
RELATIVE = 1e-9  # a recomputed value agrees with the stored one to this (float reductions may differ in the last place)


@dataclass
class Refreshed:
    """What a refresh did: rows rewritten, runs skipped with the reason, values the records no longer reproduce."""

    metrics: int = 0
    comparisons: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # run_id -> why
    mismatched: list[tuple[str, str, float, float]] = field(default_factory=list)  # run_id, metric, stored, recomputed

    def summary(self) -> str:
        lines = [f"refreshed {self.metrics} metric interval(s) and {self.comparisons} paired comparison(s)"]
        lines += [f"skipped {run_id}: {why}" for run_id, why in sorted(self.skipped.items())]
        lines += [f"value differs from its records: {run_id} {name} stored {a!r}, recomputed {b!r}" for run_id, name, a, b in self.mismatched]
        return "\n".join(lines)


def _agrees(stored: float, recomputed: float) -> bool:
    if math.isnan(stored) or math.isnan(recomputed):
        return math.isnan(stored) and math.isnan(recomputed)
    return math.isclose(stored, recomputed, rel_tol=RELATIVE, abs_tol=0.0)


def _finite(value: float) -> float | None:
    return None if value != value else float(value)


def _statistics(statistics_of: StatisticsOf, row: dict, refreshed: Refreshed) -> dict[str, Statistic] | None:
    try:
        return statistics_of(row)
    except BenchError as exc:  # no records, another task version: the run keeps its intervals, the reason is reported
        refreshed.skipped[row["run_id"]] = str(exc)
        return None


def refresh_intervals(store: Store, statistics_of: StatisticsOf, run_ids: list[str] | None = None) -> Refreshed:
    """Recompute every metric interval (and its method name) of the stored runs, and every stored paired comparison.

    `run_ids` limits the refresh to those runs (comparisons involving them). All rows are written in one transaction.
    """
    refreshed = Refreshed()
    runs = store.runs()
    if run_ids is not None:
        runs = runs[runs.run_id.isin(run_ids)]
    stored = store.metrics(list(runs.run_id)) if len(runs) else None
    statistics: dict[str, dict[str, Statistic]] = {}
    metric_rows: list[list] = []
    for row in runs.to_dict("records"):
        found = _statistics(statistics_of, row, refreshed)
        if found is None:
            continue
        statistics[row["run_id"]] = found
        for metric in stored[stored.run_id == row["run_id"]].itertuples():
            if metric.name not in found:
                continue
            statistic = found[metric.name]
            value, interval = statistic.value(), statistic.interval()
            if not _agrees(float(metric.value), value):
                refreshed.mismatched.append((row["run_id"], metric.name, float(metric.value), value))
            metric_rows.append([_finite(interval.low), _finite(interval.high), interval.method, row["run_id"], metric.name])
    comparison_rows = _comparison_rows(store, statistics)
    refreshed.metrics, refreshed.comparisons = len(metric_rows), len(comparison_rows)
    if metric_rows or comparison_rows:
        store._transaction(lambda con: _write(con, metric_rows, comparison_rows))
    return refreshed


def _comparison_rows(store: Store, statistics: dict[str, dict[str, Statistic]]) -> list[list]:
    """Paired intervals of the stored comparisons whose two runs were both recomputed."""
    if not store.exists() or "comparisons" not in store._tables():
        return []
    rows = []
    for pair in store.query("SELECT run_a, run_b, metric FROM comparisons").itertuples():
        a, b = statistics.get(pair.run_a, {}).get(pair.metric), statistics.get(pair.run_b, {}).get(pair.metric)
        if a is None or b is None:
            continue
        difference, interval = paired_difference(a, b)
        rows.append([_finite(difference), _finite(interval.low), _finite(interval.high), interval.method, pair.run_a, pair.run_b, pair.metric])
    return rows


def _write(con, metric_rows: list[list], comparison_rows: list[list]) -> None:
    if metric_rows:
        con.executemany("UPDATE metrics SET low = ?, high = ?, interval = ? WHERE run_id = ? AND name = ?", metric_rows)
    if comparison_rows:
        con.executemany('UPDATE comparisons SET "diff" = ?, diff_low = ?, diff_high = ?, interval = ? WHERE run_a = ? AND run_b = ? AND metric = ?',
                        comparison_rows)

