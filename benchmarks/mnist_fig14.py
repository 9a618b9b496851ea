"""The paper's Fig. 14 on the project's MNIST model: every digit removed, methods at matched safety.

    python benchmarks/mnist_fig14.py --db STORE --out docs/results/mnist-fig14 [--protocol standard] \
        [--targets 0.01,0.005] [--methods np,sld,dng,apg,sega,safe-denoiser] [--digits 0-9] [--commit]

For each digit K (in order) it runs `bench report --task mnist-remove-K` (every method calibrated to each target
under the rule of `bench calibrate`, every run stored in STORE, so an interrupted command resumes where it
stopped: finished runs are reused), which writes the digit's page OUT/mnist-remove-K/README.md, and keeps the digit's
matched runs with their paired differences to DNG in OUT/mnist-remove-K/matched.csv; a digit whose file already holds every
method at every target is skipped (`--redo` runs it again), so the work of an earlier machine whose store is gone stays. After
each digit it rewrites the summary OUT/README.md and the figure OUT/fig14.png (the paper's layout: KL on top, the task's
Fréchet distance below, one column per digit, each method's value at each target with its 95% interval), and with
`--commit` commits OUT to git, so a long background run keeps what it has done. The summary says, per digit and
target, which method is best on each metric and whether its paired difference to DNG (same noise) excludes 0.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
import pandas as pd

from negguide.bench.report import main as report_main
from negguide.bench.run.compare import compare_runs
from negguide.metrics.intervals import with_interval
from negguide.results.leaderboard import matched_safety_table
from negguide.results.palette import method_colour
from negguide.results.store import Store

REFERENCE = "dng"
METRICS = ("kl_classes", "fid_classifier")
PER_BAND = 5  # digits per band of the figure: ten digits as two bands of five, like the paper's two-row panels


def digits_of(text: str) -> list[int]:
    """'0-9' or '0,3,8' -> the digits."""
    if "-" in text:
        low, high = (int(part) for part in text.split("-"))
        return list(range(low, high + 1))
    return [int(part) for part in text.split(",")]


COLUMNS = ("task", "target", "method", "scale", "run_id", "safe", "forbidden_rate")


def matched_rows(store: Store, task: str, targets: list[float], protocol: str) -> pd.DataFrame:
    """Each method's calibrated run per target on `protocol`, with its metrics, their intervals, and per metric
    its paired difference to DNG's run at the same target (`<metric>__diff`, `__diff_low`, `__diff_high`, `__significant`)."""
    frames = []
    for target in targets:
        rows = matched_safety_table(store, task, target)
        if rows.empty:
            continue
        rows = rows[rows["protocol"] == protocol].assign(task=task, target=target)
        for metric in METRICS:
            differences = significance(store, rows, metric)
            for index, suffix in enumerate(("__diff", "__diff_low", "__diff_high", "__significant")):
                rows[metric + suffix] = [differences.get(method, (None,) * 4)[index] for method in rows["method"]]
        frames.append(rows)
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames)
    wanted = [*COLUMNS, "forbidden_rate__low", "forbidden_rate__high"]
    wanted += [m + suffix for m in METRICS for suffix in ("", "__low", "__high", "__diff", "__diff_low", "__diff_high", "__significant")]
    return table[[c for c in wanted if c in table.columns]].reset_index(drop=True)


def significance(store: Store, rows: pd.DataFrame, metric: str) -> dict[str, tuple[float, float, float, bool]]:
    """method -> (its value minus DNG's, the paired 95% interval, whether it excludes 0), at one task and target."""
    reference = rows[rows["method"] == REFERENCE]
    if reference.empty:
        return {}
    found = {}
    for row in rows[rows["method"] != REFERENCE].itertuples():
        for comparison in compare_runs(store, reference["run_id"].iloc[0], row.run_id):
            if comparison.name == metric:
                interval = comparison.difference_interval
                found[row.method] = (comparison.difference, interval.low, interval.high, bool(comparison.significant))
    return found


def digit_file(out: Path, digit: int) -> Path:
    """The digit's matched runs and paired differences, kept in the repository: the summary is rebuilt from these
    files, so a digit finished in an earlier session (whose store is gone) stays in it."""
    return out / f"mnist-remove-{digit}" / "matched.csv"


def digit_done(out: Path, digit: int, methods: list[str], targets: list[float]) -> bool:
    """True when the digit's file holds every method at every target."""
    path = digit_file(out, digit)
    if not path.exists():
        return False
    rows = pd.read_csv(path)
    return all(((rows["method"] == m) & np.isclose(rows["target"], t)).any() for m in methods for t in targets)


def summary_lines(table: pd.DataFrame, targets: list[float]) -> list[str]:
    """Per digit and target: the best method on each metric, and each method's paired difference to DNG."""
    lines = []
    for task, by_task in table.groupby("task", sort=False):
        lines += [f"## {task}", "", f"Page: [{task}/README.md]({task}/README.md)", ""]
        for target in targets:
            rows = by_task[np.isclose(by_task["target"], target)]
            if rows.empty:
                continue
            lines += [f"Target {target:g} (forbidden share's upper 95% bound at most the target):", ""]
            records = []
            for metric in METRICS:
                best = rows.sort_values(metric).iloc[0]
                for row in rows.to_dict("records"):
                    diff = row.get(metric + "__diff")
                    paired = "" if diff is None or pd.isna(diff) else (
                        f"{diff:+.4g} [{row[metric + '__diff_low']:.4g}, {row[metric + '__diff_high']:.4g}]"
                        + (" significant" if bool(row[metric + "__significant"]) else ""))
                    records.append({"metric": metric, "method": row["method"], "scale": row["scale"],
                                    "value": with_interval(row[metric], row[metric + "__low"], row[metric + "__high"]),
                                    "best": "best" if row["method"] == best["method"] else "",
                                    f"minus {REFERENCE} (paired)": paired})
            lines += [pd.DataFrame(records).to_markdown(index=False), ""]
    return lines


def claim_lines(table: pd.DataFrame, targets: list[float]) -> list[str]:
    """The paper's claim, digit by digit and target by target: DNG has a lower KL and Fréchet distance than each other
    method; 'holds' when every paired difference (other minus DNG) is positive and excludes 0, 'reversed' when one is
    negative and excludes 0, 'not resolved' otherwise."""
    records = []
    for (task, target), rows in table.groupby(["task", "target"], sort=False):
        others = rows[rows["method"] != REFERENCE]
        if others.empty or not (rows["method"] == REFERENCE).any():
            continue
        record = {"task": task, "target": f"{target:g}"}
        for metric in METRICS:
            diffs, significant = others[metric + "__diff"].astype(float), others[metric + "__significant"].fillna(False).astype(bool)
            if ((diffs < 0) & significant).any():
                record[metric] = "reversed: " + ", ".join(others["method"][(diffs < 0) & significant]) + " better"
            elif ((diffs > 0) & significant).all():
                record[metric] = "holds"
            else:
                record[metric] = "not resolved: " + ", ".join(others["method"][~((diffs > 0) & significant)])
        records.append(record)
    if not records:
        return []
    return ["## Does the paper's claim hold?", "",
            f"DNG better than every other method on the metric, paired on the same noise at the same target ({', '.join(f'{t:g}' for t in targets)}):",
            "", pd.DataFrame(records).to_markdown(index=False), ""]


def draw(table: pd.DataFrame, digits: list[int], out: Path) -> str:
    """The paper's Fig. 14 layout: per digit KL (above) and the Fréchet distance (below), value +- interval per target;
    five digits a band."""
    targets = sorted(table["target"].unique()) if not table.empty else [0.01]
    columns = min(len(digits), PER_BAND)
    bands = -(-len(digits) // PER_BAND)
    fig, axes = plt.subplots(2 * bands, columns, figsize=(2.6 * columns, 2.6 * 2 * bands), squeeze=False, sharex=True)
    for index, digit in enumerate(digits):
        band, column = divmod(index, PER_BAND)
        rows = table[table["task"] == f"mnist-remove-{digit}"] if not table.empty else table
        for row_index, metric in enumerate(METRICS):
            ax = axes[2 * band + row_index][column]
            for method, by_method in (rows.groupby("method") if not rows.empty else []):
                by_method = by_method.sort_values("target")
                low = by_method[metric] - by_method[metric + "__low"].fillna(by_method[metric])
                high = by_method[metric + "__high"].fillna(by_method[metric]) - by_method[metric]
                ax.errorbar(by_method["target"], by_method[metric], yerr=[low, high], marker="o", capsize=3, label=method,
                            color=method_colour(method))
            ax.set_xscale("log")
            ax.set_xticks(targets, [f"{100 * t:g}%" for t in targets])
            ax.xaxis.set_minor_formatter(NullFormatter())  # only the targets are labelled (log minor labels overlap)
            ax.set_xlim(min(targets) / 1.4, max(targets) * 1.4)
            if row_index == 0:
                ax.set_title(f"remove {digit}")
            if column == 0:
                ax.set_ylabel("KL to uniform" if metric == "kl_classes" else "Fréchet (judge)")
            if row_index == 1 and band == bands - 1:
                ax.set_xlabel("forbidden-share target")
    for column in range(len(digits) - (bands - 1) * PER_BAND, columns):  # the last band's empty places
        axes[-2][column].set_visible(False)
        axes[-1][column].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    name = "fig14.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def write_summary(out: Path, args: argparse.Namespace, targets: list[float]) -> list[int]:
    """OUT/README.md and OUT/fig14.png from every digit's file in OUT; the digits it found."""
    done = [k for k in range(10) if digit_file(out, k).exists()]
    table = pd.concat([pd.read_csv(digit_file(out, k)) for k in done]) if done else pd.DataFrame()
    picture = draw(table, done, out)
    command = f"python benchmarks/mnist_fig14.py --db STORE --out {args.out} --protocol {args.protocol} --targets {args.targets} " \
              f"--methods {args.methods} --digits {args.digits} --tolerance {args.tolerance} --max-runs {args.max_runs}"
    lines = ["# MNIST, every digit removed, at matched safety (the paper's Fig. 14)", "", ("Regenerate (resumes: finished runs are reused "
             "from STORE, finished digits from their `matched.csv`):"), "", "```", command, "```", "",
             (f"Digits done: {', '.join(map(str, done)) or 'none yet'}. Task `mnist-remove-K`: the latent MNIST model (issue 19). "
             f"Protocol `{args.protocol}`; quality metric `fid_classifier` (the Fréchet distance in the task judge's feature space: "
             "Inception FID costs minutes per run on a CPU and is left to the paper protocol). Values are `value [95% interval]`; a "
             "paired difference is the method's value minus DNG's on the same noise, with its paired-bootstrap interval; "
             "*significant* when that interval excludes 0. Each method runs at the smallest scale whose forbidden share's upper 95% "
             "bound meets the target (`bench calibrate`)."), "", f"![{picture}]({picture})", ""]
    (out / "README.md").write_text("\n".join(lines + claim_lines(table, targets) + summary_lines(table, targets)))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--protocol", default="standard")
    parser.add_argument("--targets", default="0.01,0.005")
    parser.add_argument("--methods", default="np,sld,dng")
    parser.add_argument("--digits", default="0-9")
    parser.add_argument("--commit", action="store_true", help="git-commit OUT after each digit")
    parser.add_argument("--tolerance", default="0.1", help="relative width at which each calibration's bisection stops")
    parser.add_argument("--max-runs", default="8", help="runs at most per calibration")
    parser.add_argument("--redo", action="store_true", help="run digits whose matched.csv is already complete")
    args = parser.parse_args(argv)
    targets = [float(t) for t in args.targets.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")
    for digit in digits_of(args.digits):
        task = f"mnist-remove-{digit}"
        if digit_done(args.out, digit, methods, targets) and not args.redo:
            print(f"{task}: every method at every target is in {digit_file(args.out, digit)}; skipped (--redo runs it again)", flush=True)
            continue
        report_args = ["--task", task, "--protocol", args.protocol, "--targets", args.targets, "--methods", args.methods,
                       "--tolerance", args.tolerance, "--max-runs", args.max_runs, "--out", str(args.out / task)]
        if report_main(report_args + (["--db", str(args.db)] if args.db else [])) != 0:
            return 1
        matched_rows(Store(args.db), task, targets, args.protocol).to_csv(digit_file(args.out, digit), index=False)
        write_summary(args.out, args, targets)
        print(f"{task} done; summary in {args.out / 'README.md'}", flush=True)
        if args.commit:
            subprocess.run(["git", "add", str(args.out)], check=True)
            subprocess.run(["git", "commit", "-q", "-m", f"MNIST Fig. 14: {task} at the {args.protocol} protocol", "--", str(args.out)], check=False)
    write_summary(args.out, args, targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
