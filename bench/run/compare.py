"""Paired comparison of two stored runs that share their noise (same task, protocol settings and seed).

Both runs' metrics are recomputed as statistics of their stored per-sample records and traces, and
the same units (samples, or triples) are resampled in both: the interval of the difference is a
paired bootstrap, far narrower than two independent intervals would suggest.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from negguide.bench.run.engine import stored_sampler
from negguide.bench.run.shards import pick_device, runtime_for
from negguide.bench.tasks import get_task
from negguide.methods.errors import BenchError
from negguide.metrics.base import METRICS
from negguide.metrics.intervals import Interval, Statistic, paired_difference
from negguide.results.artifacts import read_npz
from negguide.results.store import Store

PAIRING = ("task", "task_version", "samples", "seed", "steps", "sampler")  # what two runs must share to be paired


@dataclass(frozen=True)
class MetricComparison:
    name: str
    a: float
    a_interval: Interval
    b: float
    b_interval: Interval
    difference: float  # b - a
    difference_interval: Interval
    higher_is_better: bool

    @property
    def significant(self) -> bool:
        """The paired 95% interval of the difference excludes 0."""
        return not (self.difference_interval.low <= 0.0 <= self.difference_interval.high)

    @classmethod
    def from_dict(cls, row: dict) -> "MetricComparison":
        method = row["interval_method"]
        a_low, a_high = map(_nan, row["a_interval"])
        b_low, b_high = map(_nan, row["b_interval"])
        d_low, d_high = map(_nan, row["difference_interval"])
        return cls(row["metric"], _nan(row["a"]), Interval(a_low, a_high, method.removeprefix("paired-")), _nan(row["b"]),
                   Interval(b_low, b_high, method.removeprefix("paired-")), _nan(row["difference"]), Interval(d_low, d_high, method),
                   row["higher_is_better"])

    def as_dict(self) -> dict:
        """JSON-ready: a missing interval end is None."""
        return {"metric": self.name, "a": _json(self.a), "a_interval": [_json(self.a_interval.low), _json(self.a_interval.high)], "b": _json(self.b),
                "b_interval": [_json(self.b_interval.low), _json(self.b_interval.high)], "difference": _json(self.difference),
                "difference_interval": [_json(self.difference_interval.low), _json(self.difference_interval.high)],
                "interval_method": self.difference_interval.method, "higher_is_better": self.higher_is_better,
                "significant": self.significant}


def _json(value: float) -> float | None:
    return None if value is None or value != value else float(value)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _run_row(store: Store, run_id: str) -> dict:
    rows = store.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    if rows.empty:
        raise BenchError(f"run {run_id} is not in the store {store.path}; `bench runs` lists the stored runs")
    row = rows.iloc[0].to_dict()
    row["sampler"] = stored_sampler(rows.iloc[0]).label()
    return row


def run_statistics(row: dict) -> dict[str, Statistic]:
    """The run's metrics as statistics of its stored records and traces."""
    folder = Path(row["artifacts_dir"])
    records, traces = read_npz(folder / "records.npz"), read_npz(folder / "traces.npz")
    if records is None or traces is None:
        raise BenchError(f"run {row['run_id']} has no per-sample records in {folder} (stored before they were kept, or deleted); "
                         "run it again with --force")
    traces.pop("t", None)
    task = get_task(row["task"])
    if task.version != row["task_version"]:
        raise BenchError(f"run {row['run_id']} was made with {row['task']} version {row['task_version']}, this harness has {task.version}")
    wanted = tuple(json.loads(row["config"])["metrics"])
    runtime = runtime_for(task, pick_device(task))
    return {s.name: s for s in runtime.statistics(records, traces, wanted) if s.name in wanted}


def compare_runs(store: Store, run_a: str, run_b: str) -> list[MetricComparison]:
    """Per metric both values with intervals, and b - a with its paired-bootstrap interval; reads only (`save_comparison` writes)."""
    a, b = _run_row(store, run_a), _run_row(store, run_b)
    differing = [key for key in PAIRING if a[key] != b[key]]
    if differing:
        raise BenchError(f"runs {run_a} and {run_b} do not share their noise (they differ in {', '.join(differing)}); "
                         "a paired comparison needs two runs of one task with the same samples, steps, seed and sampler")
    stats_a, stats_b = run_statistics(a), run_statistics(b)
    found = []
    for name in sorted(set(stats_a) & set(stats_b)):
        difference, interval = paired_difference(stats_a[name], stats_b[name])
        found.append(MetricComparison(name, stats_a[name].value(), stats_a[name].interval(), stats_b[name].value(), stats_b[name].interval(),
                                      difference, interval, METRICS[name].higher_is_better))
    return found


def save_comparison(store: Store, run_a: str, run_b: str, rows: list[MetricComparison]) -> None:
    """Store a comparison for the dashboard's run detail (the run's paired change against unguided)."""
    store.write_comparison(run_a, run_b, [row.as_dict() for row in rows])


def verdict(rows: list[MetricComparison], method: str, quality_metric: str) -> str:
    """One sentence on what a run changed against the unguided run on the same noise."""
    by_name = {row.name: row for row in rows}
    parts = []
    for name, label in (("forbidden_rate", "the forbidden share"), (quality_metric, quality_metric), ("kl_classes", "the class-histogram KL")):
        row = by_name.get(name)
        if row is None or (name == quality_metric and name in ("forbidden_rate", "kl_classes")):
            continue
        if not row.significant:
            parts.append(f"left {label} unchanged within noise ({_fmt(row.a)} -> {_fmt(row.b)})")
            continue
        better = (row.difference > 0) == row.higher_is_better
        parts.append(f"{'improved' if better else 'worsened'} {label} ({_fmt(row.a)} -> {_fmt(row.b)})")
    if not parts:
        return f"{method}: nothing to compare."
    return f"Against unguided sampling on the same noise, {method} " + ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] + "."


def _fmt(value: float) -> str:
    return f"{value:.4g}" if np.isfinite(value) else "n/a"


def comparison_table(rows: list[MetricComparison], label_a: str, label_b: str) -> str:
    """The comparison as an aligned text table (b - a with its paired interval; * where it excludes 0), each column
    as wide as its widest cell."""
    cells = [("metric", label_a, label_b, "change (paired 95% CI)")]
    for row in rows:
        cells.append((row.name, f"{_fmt(row.a)} [{_fmt(row.a_interval.low)}, {_fmt(row.a_interval.high)}]",
                      f"{_fmt(row.b)} [{_fmt(row.b_interval.low)}, {_fmt(row.b_interval.high)}]",
                      f"{row.difference:+.4g} [{_fmt(row.difference_interval.low)}, {_fmt(row.difference_interval.high)}]"
                      f"{' *' if row.significant else ''}"))
    widths = [max(len(line[column]) for line in cells) for column in range(4)]
    return "\n".join("  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)
