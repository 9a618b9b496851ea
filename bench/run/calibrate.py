"""Matched-safety calibration: the smallest guidance scale that is *safe* at a target.

Safe (docs/trust.md, one rule everywhere): the upper end of the forbidden share's 95% Wilson interval
is at most the target, so a run is called safe only when its sample count can show it. The paper
compares methods at equal safety; this finds, per method, the scale where that holds.
Bracket first (halve or double the scale until the target is crossed), then bisect between the
largest scale that misses it and the smallest that meets it, until they are within a relative
tolerance or the run budget is spent. Every point is an ordinary stored run (its id hashes its
config), so a repeated calibration reuses them. The forbidden share should fall as the scale grows:
points where a larger scale is significantly less safe (Wilson intervals apart) are reported.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from negguide.bench.run.engine import RunOutcome, run_one
from negguide.bench.run.executors import Executor
from negguide.bench.run.plan import RunRequest, resolve
from negguide.methods.errors import BenchError, MethodError
from negguide.methods.registry import method_class
from negguide.metrics.intervals import wilson
from negguide.results.leaderboard import safe_at
from negguide.results.store import UPPER95, CalibrationRecord, Store

MAX_RUNS = 12
TOLERANCE = 0.05  # stop when (meets - misses) / meets is below this
MAX_DOUBLINGS = 10


@dataclass(frozen=True)
class Point:
    scale: float
    run_id: str
    forbidden: float
    low: float
    high: float
    reused: bool

    def meets(self, target: float) -> bool:
        """Safe at `target`: the upper end of the 95% interval, not the point estimate, is at most it."""
        return safe_at(self.high, target)

    def as_dict(self) -> dict:
        return {"scale": self.scale, "run_id": self.run_id, "forbidden_rate": self.forbidden, "interval": [self.low, self.high], "reused": self.reused}


def smallest_establishable(samples: int) -> float:
    """The smallest target a run of `samples` can be safe at: the Wilson upper bound of 0 forbidden out of `samples`."""
    return wilson(0, samples).high


def samples_to_establish(target: float) -> int:
    """The fewest samples whose Wilson upper bound at 0 forbidden is at most `target` (0 < target < 1)."""
    z2 = 1.959963984540054 ** 2  # Wilson at 0 successes: upper = z^2 / (n + z^2)
    n = max(1, int(z2 * (1.0 - target) / target) - 1)
    while smallest_establishable(n) > target:
        n += 1
    return n


@dataclass
class Calibration:
    calibration_id: str
    request: RunRequest
    target: float
    points: list[Point] = field(default_factory=list)
    chosen: Point | None = None
    failed: dict[float, str] = field(default_factory=dict)  # scale -> the first line of why its run stopped (NaN or inf, say)

    @property
    def violations(self) -> list[tuple[Point, Point]]:
        """Pairs where the larger scale is significantly less safe (Wilson intervals apart)."""
        ordered = sorted(self.points, key=lambda p: p.scale)
        return [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:] if b.low > a.high]

    def as_dict(self) -> dict:
        return {"calibration_id": self.calibration_id, "task": self.request.task, "method": self.request.method, "target": self.target,
                "rule": UPPER95, "params": self.request.params, "chosen": self.chosen.as_dict() if self.chosen else None,
                "monotone": not self.violations, "points": [p.as_dict() for p in sorted(self.points, key=lambda p: p.scale)],
                "failed": {_scale_text(scale): why for scale, why in self.failed.items()}}


def calibration_id(request: RunRequest, target: float) -> str:
    """Ids of requests that name no sampler are those made before samplers existed; the rule enters every id,
    so a calibration made under the old point-estimate rule never shares an id with one made under UPPER95."""
    key = [request.task, request.method, request.params, request.protocol, request.samples, request.steps, request.seed, request.variance, target]
    if request.sampler is not None or request.sampler_params:
        key.append({"sampler": request.sampler, "settings": request.sampler_params})
    key.append({"rule": UPPER95})
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _scale_text(scale: float) -> str:
    return f"{scale:.6g}"


def calibrate(request: RunRequest, target: float, store: Store, executor: Executor | None = None, *, start: float | None = None,
              max_runs: int = MAX_RUNS, tolerance: float = TOLERANCE, progress: bool = True, device: str | None = None,
              on_point: Callable[[Point], None] | None = None) -> Calibration:
    """Find the smallest scale meeting the target; store the runs and the calibration. `on_point` hears of each run as it lands."""
    if not 0.0 <= target < 1.0:
        raise BenchError(f"--target must be a share in [0, 1), got {target}")
    if not 0.0 < tolerance < 1.0 or max_runs < 1:
        raise BenchError(f"--tolerance must be in (0, 1) and --max-runs >= 1, got {tolerance} and {max_runs}")
    if "scale" in request.params:
        raise BenchError("calibrate chooses the scale: drop --param scale=... (use --start to say where to begin)")
    cls = method_class(request.method)
    start = float(start if start is not None else cls.Params().scale)
    if not start > 0.0:
        raise BenchError(f"--start must be a positive scale, got {start} (the method's default scale is {cls.Params().scale})")
    resolved = resolve(replace(request, params={**request.params, "scale": _scale_text(start)}))  # every bad input fails before any run
    _check_establishable(target, forbidden_units(resolved.task, resolved.samples))
    found = Calibration(calibration_id(request, target), request, target)

    def evaluate(scale: float) -> Point:
        if len(found.points) >= max_runs:
            raise _Stop()
        point_request = replace(request, params={**request.params, "scale": _scale_text(scale)}, sweep_id=found.calibration_id)
        try:
            outcome: RunOutcome = run_one(resolve(point_request), store, executor, progress=progress, device=device)
        except MethodError as exc:  # the method broke down at this scale (it diverged): no point, and no search past it
            found.failed[float(_scale_text(scale))] = str(exc).splitlines()[0]
            raise _Stop() from None
        if "forbidden_rate" not in outcome.result["metrics"]:
            raise BenchError(f"task {request.task} reports no forbidden_rate: there is no safety to calibrate")
        low, high = outcome.result["intervals"]["forbidden_rate"]
        point = Point(float(_scale_text(scale)), outcome.run_id, outcome.result["metrics"]["forbidden_rate"], low, high, outcome.reused)
        found.points.append(point)
        if on_point is not None:
            on_point(point)
        return point

    try:
        _search(evaluate, start, target, tolerance)
    except _Stop:
        pass
    meeting = [p for p in found.points if p.meets(target)]
    found.chosen = min(meeting, key=lambda p: p.scale) if meeting else None
    if found.chosen is not None:
        store.write_calibration(CalibrationRecord(
            found.calibration_id, request.task, request.method, json.dumps(request.params, sort_keys=True), target, found.chosen.scale,
            found.chosen.run_id, not found.violations, json.dumps(found.as_dict()["points"]), time.time(), UPPER95))
    return found


def forbidden_units(task, samples: int) -> int:
    """What a task's forbidden share counts: samples, or on paired tasks the (reference, related, unrelated) triples."""
    paired = "triples sharing noise" in task.description  # the paired tasks' own words; Task declares no unit yet
    return samples // 3 if paired else samples


def establishable_targets(task, targets: list[float]) -> dict:
    """Per protocol: its forbidden-share units, the smallest target it can establish, and which of `targets` it can."""
    found = {}
    for name, protocol in task.protocols.items():
        units = forbidden_units(task, protocol.samples)
        floor = smallest_establishable(units) if units > 0 else 1.0
        found[name] = {"units": units, "smallest_target": floor, "targets": {f"{t:g}": safe_at(floor, t) for t in targets}}
    return found


def _check_establishable(target: float, samples: int) -> None:
    """Refuse a target no run of this size can be safe at: even 0 forbidden samples leave the upper bound above it."""
    floor = smallest_establishable(samples)
    if floor > target:
        raise BenchError(f"target {target:g} cannot be established with {samples} samples (0 forbidden still has a 95% upper bound of "
                         f"{floor:.4g}); use --samples {samples_to_establish(target)} or more, a larger --protocol, or a target >= {floor:.4g}")


class _Stop(Exception):
    """The run budget is spent, or a run failed: keep what was found."""


def _search(evaluate, start: float, target: float, tolerance: float) -> None:
    """Bracket the target between a missing and a meeting scale (Point.meets: the upper bound), then bisect."""
    first = evaluate(start)
    if first.meets(target):
        meets, misses = first.scale, None
        for _ in range(MAX_DOUBLINGS):  # halve until the target is missed: the smallest scale that meets it lies above
            point = evaluate(meets / 2.0)
            if not point.meets(target):
                misses = point.scale
                break
            meets = point.scale
        if misses is None:
            return  # met down to start / 2^k: report the smallest scale tried
    else:
        misses, meets = first.scale, None
        for _ in range(MAX_DOUBLINGS):
            point = evaluate(misses * 2.0)
            if point.meets(target):
                meets = point.scale
                break
            misses = point.scale
        if meets is None:
            return  # never met: the chosen point stays empty
    while (meets - misses) / meets > tolerance:
        middle = (meets + misses) / 2.0
        point = evaluate(middle)
        if point.meets(target):
            meets = point.scale
        else:
            misses = point.scale
