"""What `bench run` shows beside a run besides unguided sampling: the task's comparison methods (`Task.compare_with`)
at the task's defaults, on the same noise. When the task's default scales were calibrated to one target, that is
the paper's comparison at matched safety, made by the first command a newcomer types."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from negguide.bench.run.compare import MetricComparison, _fmt
from negguide.bench.run.plan import RunRequest
from negguide.bench.tasks import TaskOptions, get_task

# What the sentence reads, in this order: safety first, then the quality metrics.
READ = (("forbidden_rate", "forbidden share"), ("kl_classes", "class-histogram KL"))


def beside_requests(request: RunRequest) -> list[RunRequest]:
    """The task's comparison methods at the task's defaults, on the run's noise. Only for a run at the task's own
    defaults (no --param): a hand-set scale is not at matched safety with anything, so it is shown beside unguided only."""
    if request.method == "none" or request.params:
        return []
    task = get_task(request.task, TaskOptions(request.prompts))
    return [replace(request, method=method, params={}) for method in task.compare_with if method != request.method]


def defaults_label(task_name: str, method: str) -> str:
    """'scale=1.5, prior=0.25' for the task's defaults of a method ('its own defaults' when the task sets none)."""
    values = get_task(task_name).defaults_for(method)
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "its own defaults"


def matched_sentence(rows: list[MetricComparison], this: str, other: str, quality_metric: str) -> str:
    """One sentence on `this` against `other` on the same noise (rows: other = a, this = b), safety first."""
    by_name = {row.name: row for row in rows}
    parts = []
    for name, label in (READ[0], (quality_metric, quality_metric), READ[1]):
        row = by_name.get(name)
        if row is None or not np.isfinite(row.difference):
            continue
        if not row.significant:
            parts.append(f"the same {label} within noise ({_fmt(row.b)} against {_fmt(row.a)})")
            continue
        better = (row.difference > 0) == row.higher_is_better
        parts.append(f"a {'better' if better else 'worse'} {label} ({_fmt(row.b)} against {_fmt(row.a)}, "
                     f"paired difference {row.difference:+.3g} [{_fmt(row.difference_interval.low)}, {_fmt(row.difference_interval.high)}])")
    if not parts:
        return f"{this} and {other}: nothing to compare."
    return f"On the same noise, {this} against {other}: " + "; ".join(parts) + "."
