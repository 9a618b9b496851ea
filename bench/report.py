"""A results page for one task: guidance methods compared at matched safety, with intervals.

    python -m negguide.bench.report --task gmm1d-remove-1 --targets 0.01,0.005 --out docs/results/gmm1d-remove-1
    python -m negguide.bench.report --task gmm1d-remove-1 --sampler ddim --sampler-param eta=0 --steps 50 --out ...

For each target forbidden share, every method is calibrated (`bench calibrate`: the smallest scale
meeting the target) on one protocol; the page gives each method's quality at that scale with 95%
intervals, the paired difference of each method against DNG (same noise, paired bootstrap), every
calibration point, and the safety-vs-quality plot with error bars (paper Fig. 4 / 14). Every number
on the page comes from this command; runs are stored and reused.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from negguide.bench.run import RunRequest, resolve, run_one
from negguide.bench.run.calibrate import Calibration, calibrate
from negguide.bench.run.compare import compare_runs
from negguide.metrics.intervals import with_interval
from negguide.results.leaderboard import headline_of
from negguide.results.palette import UNGUIDED_COLOUR, method_colour
from negguide.results.store import Store

LABELS = {"none": "unguided", "np": "NP", "sld": "SLD", "dng": "DNG"}
REFERENCE_METHOD = "dng"
# Columns beside the forbidden share and the task's quality metric, where the task measures them:
# the class histogram on removal tasks; on the exact prompt analogue, the change of related samples and Q.
SIDE_METRICS = ("kl_classes", "change_related", "q_modes")


def columns_of(result: dict, quality: str) -> list[str]:
    """The metrics a results table shows for a task: the side metrics it measures, then its quality metric."""
    return [name for name in SIDE_METRICS if name in result["metrics"] and name != quality] + [quality]


def cells(result: dict, columns: list[str]) -> dict[str, str]:
    """`value [low, high]` of the forbidden share and each column."""
    m, i = result["metrics"], result["intervals"]
    return {name if name != "kl_classes" else "KL": with_interval(m[name], *i[name]) for name in ("forbidden_rate", *columns)}


def calibrated(base: RunRequest, methods: list[str], targets: list[float], fixed: dict, store: Store, max_runs: int,
               starts: dict, tolerance: float) -> dict:
    """(target, method) -> Calibration, every run stored; `base` names the task, protocol, sampler and steps."""
    found = {}
    for target in targets:
        for method in methods:
            request = replace(base, method=method, params=dict(fixed.get(method, {})))
            found[(target, method)] = calibrate(request, target, store, start=starts.get(method), max_runs=max_runs, tolerance=tolerance,
                                                progress=False)
    return found


def result_of(store: Store, run_id: str) -> dict:
    from negguide.bench.run.engine import stored_result

    return stored_result(store, run_id)


def is_smallest(calibration: Calibration, tolerance: float) -> str:
    """Whether the chosen scale is bracketed from below within the tolerance (a budget-limited search may stop before)."""
    chosen = calibration.chosen
    below = [p.scale for p in calibration.points if p.scale < chosen.scale and not p.meets(calibration.target)]
    return "yes" if below and (chosen.scale - max(below)) / chosen.scale <= tolerance + 1e-9 else "not established"


def target_section(store: Store, task: str, target: float, found: dict, methods: list[str], quality: str, unguided: dict | None,
                   tolerance: float) -> list[str]:
    rows, chosen = [], {}
    for method in methods:
        calibration: Calibration = found[(target, method)]
        if calibration.chosen is None:
            rows.append({"method": LABELS.get(method, method), "scale": "not reached", "runs": len(calibration.points)})
            continue
        result = result_of(store, calibration.chosen.run_id)
        chosen[method] = result
        columns = columns_of(result, quality)
        rows.append({"method": LABELS.get(method, method), "scale": f"{calibration.chosen.scale:.4g}", **cells(result, columns),
                     "monotone": "no" if calibration.violations else "yes", "smallest scale": is_smallest(calibration, tolerance),
                     "runs": len(calibration.points), "run": calibration.chosen.run_id})
    if unguided is not None:
        rows.append({"method": "unguided", "scale": "-", **cells(unguided, columns_of(unguided, quality)), "monotone": "", "runs": 1,
                     "run": unguided["run_id"]})
    table = pd.DataFrame(rows).rename(columns={"forbidden_rate": "forbidden share"}).fillna("-")
    lines = [f"## Target: forbidden share <= {target:g}", "", table.to_markdown(index=False), ""]
    for method in methods:
        for scale, why in found[(target, method)].failed.items():
            lines += [f"{LABELS.get(method, method)}: the run at scale {scale:g} stopped ({why}); the search ended there.", ""]
    missed = [LABELS.get(m, m) for m in methods if found[(target, m)].chosen is None]
    if missed:
        lines += [f"Not reached ({', '.join(missed)}): no scale tried met the target within the run budget (every point below).", ""]
    if REFERENCE_METHOD in chosen:
        lines += ["Paired differences against DNG at this target (other minus DNG, same noise; 95% paired-bootstrap interval; "
                  "* where it excludes 0):", ""]
        for method, result in chosen.items():
            if method == REFERENCE_METHOD:
                continue
            comparison = {row.name: row for row in compare_runs(store, chosen[REFERENCE_METHOD]["run_id"], result["run_id"])}
            parts = []
            for name in (quality, *SIDE_METRICS, "forbidden_rate"):
                row = comparison.get(name)
                if row is not None:
                    parts.append(f"{name} {row.difference:+.4g} [{row.difference_interval.low:.4g}, {row.difference_interval.high:.4g}]"
                                 f"{' *' if row.significant else ''}")
            lines.append(f"- {LABELS.get(method, method)} - DNG: " + "; ".join(parts))
        lines.append("")
    return lines


def plot(found: dict, store: Store, quality: str, unguided: dict | None, targets: list[float], out: Path) -> str:
    """Every calibration point: forbidden share against quality, 95% error bars both ways, each method in its palette colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    by_method: dict[str, dict[str, dict]] = {}
    for (_, method), calibration in found.items():
        for point in calibration.points:
            by_method.setdefault(method, {})[point.run_id] = result_of(store, point.run_id)
    for method, results in by_method.items():
        points = sorted(results.values(), key=lambda r: r["params"]["scale"])
        x = [100 * r["metrics"]["forbidden_rate"] for r in points]
        y = [r["metrics"][quality] for r in points]
        xerr = [[100 * (r["metrics"]["forbidden_rate"] - r["intervals"]["forbidden_rate"][0]) for r in points],
                [100 * (r["intervals"]["forbidden_rate"][1] - r["metrics"]["forbidden_rate"]) for r in points]]
        yerr = [[max(0.0, r["metrics"][quality] - r["intervals"][quality][0]) for r in points],
                [max(0.0, r["intervals"][quality][1] - r["metrics"][quality]) for r in points]]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", capsize=2, color=method_colour(method), label=LABELS.get(method, method))
    if unguided is not None:
        ax.plot([100 * unguided["metrics"]["forbidden_rate"]], [unguided["metrics"][quality]], "*", color=UNGUIDED_COLOUR, markersize=14,
                label="unguided")
    for target in targets:
        ax.axvline(100 * target, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("forbidden share (%)")
    ax.set_ylabel(quality)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0.0)
    ax.set_yscale("log")  # distances span decades when a method over-steers
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    name = f"forbidden_vs_{quality}.png"
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return name


def without_db(argv: list[str]) -> list[str]:
    """The command as printed on a page: the store is the reader's own (`--db` left out)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--db":
            skip = True
        elif not arg.startswith("--db="):
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="results page for one removal task at matched safety")
    parser.add_argument("--task", default="mnist-remove-0", help="a removal task (`bench list tasks`; default mnist-remove-0)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the page (README.md, points.csv, figures)")
    parser.add_argument("--db", type=Path, help="DuckDB store; its runs and calibrations are reused (default: the bench store)")
    parser.add_argument("--protocol", default="quick", help="samples and steps of every run (`bench describe task T`; default quick)")
    parser.add_argument("--sampler", help="the sampler every run uses (default: the protocol's)")
    parser.add_argument("--sampler-param", action="append", default=[], metavar="KEY=VALUE", help="a sampler setting (repeatable)")
    parser.add_argument("--steps", type=int, help="respaced steps (default: the protocol's)")
    parser.add_argument("--targets", default="0.01", help="comma-separated forbidden shares, e.g. 0.01,0.005")
    parser.add_argument("--methods", default="np,sld,dng", help="comma-separated methods to calibrate (default np,sld,dng)")
    parser.add_argument("--fixed", type=json.loads, default={}, help="JSON {method: {param: value}} held fixed")
    parser.add_argument("--max-runs", type=int, default=12, help="runs one calibration may take (default 12)")
    parser.add_argument("--starts", type=json.loads, default={}, help="JSON {method: first scale} (default: each method's default scale)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="relative width at which bisection stops (default 0.05)")
    parser.add_argument("--no-unguided", action="store_true", help="leave out the unguided run (one more run of the protocol)")
    args = parser.parse_args(argv)
    store = Store(args.db)
    store.check(writing=True)
    args.out.mkdir(parents=True, exist_ok=True)
    targets, methods = [float(t) for t in args.targets.split(",")], args.methods.split(",")
    base = RunRequest(task=args.task, method="none", protocol=args.protocol, steps=args.steps, sampler=args.sampler,
                      sampler_params=dict(pair.split("=", 1) for pair in args.sampler_param))
    found = calibrated(base, methods, targets, args.fixed, store, args.max_runs, args.starts, args.tolerance)
    unguided = None if args.no_unguided else run_one(resolve(base), store, progress=False).result
    quality, _ = headline_of(store, args.task)
    picture = plot(found, store, quality, unguided, targets, args.out)
    command = "python -m negguide.bench.report " + shlex.join(without_db(argv if argv is not None else sys.argv[1:]))
    run = resolve(replace(base, method="np"))
    exploratory = "" if run.protocol else " (not the protocol's own steps or sampler: exploratory runs)"
    lines = [f"# Results: {args.task} at matched safety", "", "Regenerate with:", "", "```", command, "```", "",
             f"Protocol `{args.protocol}`: {run.samples} samples, {run.steps} steps of the sampler `{run.sampler.label()}`, seed {run.seed}"
             f"{exploratory}. Each method is calibrated to the smallest guidance scale whose forbidden share's upper 95% bound is at most the "
             f"target (bracketing, then bisection to {args.tolerance:.0%} or {args.max_runs} runs; `bench calibrate`). Values are `value [95% interval]`: Wilson for shares, "
             f"bootstrap over samples otherwise. Quality metric: `{quality}`.", ""]
    for target in targets:
        lines += target_section(store, args.task, target, found, methods, quality, unguided, args.tolerance)
    points = [{"target": target, "method": method, **point.as_dict()} for (target, method), c in found.items() for point in c.points]
    pd.DataFrame(points).to_csv(args.out / "points.csv", index=False)
    lines += ["## Every calibration point", "", pd.DataFrame(points).drop(columns=["interval"]).to_markdown(index=False), "", f"![{picture}]({picture})", ""]
    (args.out / "README.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
