"""The paper's Fig. 14 on the project's MNIST model: every digit removed, methods at matched safety.

    python benchmarks/mnist_fig14.py --db STORE --out docs/results/mnist-fig14 [--protocol standard] \
        [--targets 0.01,0.005] [--methods np,sld,dng,apg,sega,safe-denoiser] [--digits 0-9] [--commit]

For each digit K (in order) it runs `bench report --task mnist-remove-K` (every method calibrated to each target
under the rule of `bench calibrate`, every run stored in STORE, so an interrupted command resumes where it
stopped: finished runs are reused), which writes the digit's page OUT/mnist-remove-K/README.md; after each digit
it rewrites the summary OUT/README.md and the figure OUT/fig14.png (the paper's layout: KL on top, the task's
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

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from negguide.bench.report import main as report_main  # noqa: E402
from negguide.bench.run.compare import compare_runs  # noqa: E402
from negguide.metrics.intervals import with_interval  # noqa: E402
from negguide.results.leaderboard import headline_of, matched_safety_table  # noqa: E402
from negguide.results.palette import method_colour  # noqa: E402
from negguide.results.store import Store  # noqa: E402

REFERENCE = "dng"
METRICS = ("kl_classes", "fid_classifier")


def digits_of(text: str) -> list[int]:
    """'0-9' or '0,3,8' -> the digits."""
    if "-" in text:
        low, high = (int(part) for part in text.split("-"))
        return list(range(low, high + 1))
    return [int(part) for part in text.split(",")]


def matched_rows(store: Store, task: str, targets: list[float], protocol: str) -> pd.DataFrame:
    """Each method's calibrated run per target on `protocol`, with its metrics and intervals."""
    frames = []
    for target in targets:
        rows = matched_safety_table(store, task, target)
        if not rows.empty:
            frames.append(rows[rows["protocol"] == protocol].assign(task=task, target=target))
    return pd.concat(frames) if frames else pd.DataFrame()


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
                found[row.method] = (comparison.difference, interval.low, interval.high, comparison.significant)
    return found


def summary_lines(store: Store, table: pd.DataFrame, targets: list[float]) -> list[str]:
    """Per digit and target: the best method on each metric, and each method's paired difference to DNG."""
    lines = []
    for task, by_task in table.groupby("task", sort=False):
        lines += [f"## {task}", "", f"Page: [{task}/README.md]({task}/README.md)", ""]
        for target in targets:
            rows = by_task[by_task["target"] == target]
            if rows.empty:
                continue
            lines += [f"Target {target:g} (forbidden share's upper 95% bound at most the target):", ""]
            records = []
            for metric in METRICS:
                best = rows.sort_values(metric).iloc[0]
                differences = significance(store, rows, metric)
                for row in rows.itertuples():
                    diff = differences.get(row.method)
                    records.append({"metric": metric, "method": row.method, "scale": getattr(row, "scale"),
                                    "value": with_interval(getattr(row, metric), getattr(row, metric + "__low"), getattr(row, metric + "__high")),
                                    "best": "best" if row.method == best["method"] else "",
                                    f"minus {REFERENCE} (paired)": "" if diff is None else f"{diff[0]:+.4g} [{diff[1]:.4g}, {diff[2]:.4g}]"
                                    + (" significant" if diff[3] else "")})
            lines += [pd.DataFrame(records).to_markdown(index=False), ""]
    return lines


def draw(table: pd.DataFrame, digits: list[int], out: Path) -> str:
    """The paper's Fig. 14 layout: KL (top) and the Fréchet distance (bottom) per digit, value +- interval per target."""
    fig, axes = plt.subplots(2, len(digits), figsize=(2.4 * len(digits), 5.2), squeeze=False, sharex=True)
    for column, digit in enumerate(digits):
        rows = table[table["task"] == f"mnist-remove-{digit}"] if not table.empty else table
        for row_index, metric in enumerate(METRICS):
            ax = axes[row_index][column]
            for method, by_method in (rows.groupby("method") if not rows.empty else []):
                by_method = by_method.sort_values("target")
                low = by_method[metric] - by_method[metric + "__low"].fillna(by_method[metric])
                high = by_method[metric + "__high"].fillna(by_method[metric]) - by_method[metric]
                ax.errorbar(by_method["target"], by_method[metric], yerr=[low, high], marker="o", capsize=3, label=method,
                            color=method_colour(method))
            ax.set_xscale("log")
            if row_index == 0:
                ax.set_title(f"remove {digit}")
            if column == 0:
                ax.set_ylabel("KL to uniform" if metric == "kl_classes" else "Fréchet (judge)")
            if row_index == 1:
                ax.set_xlabel("forbidden-share target")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    name = "fig14.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def write_summary(store: Store, out: Path, args: argparse.Namespace, done: list[int], targets: list[float]) -> None:
    table = pd.concat([matched_rows(store, f"mnist-remove-{k}", targets, args.protocol) for k in done] or [pd.DataFrame()])
    picture = draw(table, done, out)
    quality, _ = headline_of(store, f"mnist-remove-{done[0]}")
    command = f"python benchmarks/mnist_fig14.py --out {args.out} --protocol {args.protocol} --targets {args.targets} " \
              f"--methods {args.methods} --digits {args.digits}"
    lines = ["# MNIST, every digit removed, at matched safety (the paper's Fig. 14)", "", "Regenerate (resumes from the store):", "",
             "```", command, "```", "", f"Digits done: {', '.join(map(str, done))}. Protocol `{args.protocol}`; headline quality metric "
             f"`{quality}` (the judge-space Fréchet distance: Inception FID costs minutes per run on a CPU and is left to the paper protocol). "
             "Values are `value [95% interval]`; a paired difference is the method's value minus DNG's on the same noise, "
             "with its paired-bootstrap interval; *significant* when that interval excludes 0.", "", f"![{picture}]({picture})", ""]
    (out / "README.md").write_text("\n".join(lines + summary_lines(store, table, targets)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--protocol", default="standard")
    parser.add_argument("--targets", default="0.01,0.005")
    parser.add_argument("--methods", default="np,sld,dng")
    parser.add_argument("--digits", default="0-9")
    parser.add_argument("--commit", action="store_true", help="git-commit OUT after each digit")
    args = parser.parse_args(argv)
    targets = [float(t) for t in args.targets.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    done: list[int] = []
    for digit in digits_of(args.digits):
        task = f"mnist-remove-{digit}"
        report_args = ["--task", task, "--protocol", args.protocol, "--targets", args.targets, "--methods", args.methods,
                       "--out", str(args.out / task)]
        if report_main(report_args + (["--db", str(args.db)] if args.db else [])) != 0:
            return 1
        done.append(digit)
        write_summary(Store(args.db), args.out, args, done, targets)
        print(f"{task} done; summary in {args.out / 'README.md'}", flush=True)
        if args.commit:
            subprocess.run(["git", "add", str(args.out)], check=True)
            subprocess.run(["git", "commit", "-q", "-m", f"MNIST Fig. 14: {task} at the {args.protocol} protocol", "--", str(args.out)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
