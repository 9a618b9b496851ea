"""A results page for one removal task: unguided, NP, SLD and DNG over guidance sweeps.

    python -m negguide.bench.report --task mnist-remove-0 --out docs/results/mnist-remove-0

Runs (or reuses from the store) every point, then writes README.md with the table and
safety-vs-quality / safety-vs-KL plots (paper Fig. 4 / 14). Every number on the page comes
from this command.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from negguide.bench.run import RunRequest, resolve, run_one
from negguide.results.leaderboard import headline_of
from negguide.results.store import Store

DEFAULT_GRID = {"none": ["0"], "np": ["0.25", "0.5", "1", "2"], "sld": ["0.25", "0.5", "1", "2"], "dng": ["1", "2.5", "5", "10", "20"]}
LABELS = {"none": "unguided", "np": "NP", "sld": "SLD", "dng": "DNG"}


def run_grid(task: str, grid: dict[str, list[str]], fixed: dict[str, dict[str, str]], store: Store, samples: int | None,
             steps: int | None, seed: int) -> pd.DataFrame:
    """Every (method, scale) point, stored; one row per point with its metrics."""
    rows = []
    for method, scales in grid.items():
        for scale in scales:
            params = {**fixed.get(method, {}), "scale": scale}
            outcome = run_one(resolve(RunRequest(task=task, method=method, params=params, samples=samples, steps=steps, seed=seed)), store)
            rows.append({"method": method, "scale": float(scale), **outcome.result["metrics"], "samples": outcome.result["samples"],
                         "steps": outcome.result["steps"], "run_id": outcome.run_id, "wall_s": outcome.result["timings"].get("total_s")})
    return pd.DataFrame(rows)


def plot_curves(table: pd.DataFrame, quality: str, out: Path) -> list[str]:
    """Forbidden share vs quality and vs KL, one line per method (unguided as a star)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for metric in (quality, "kl_classes"):
        fig, ax = plt.subplots(figsize=(5, 4))
        for method, rows in table.groupby("method", sort=False):
            rows = rows.sort_values("scale")
            style = {"marker": "*", "markersize": 14, "linestyle": "none"} if method == "none" else {"marker": "o"}
            ax.plot(rows["forbidden_rate"], rows[metric], label=LABELS.get(method, method), **style)
            if method != "none":
                for _, r in rows.iterrows():
                    ax.annotate(f"{r.scale:g}", (r.forbidden_rate, r[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("forbidden share (lower is safer)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        name = f"forbidden_vs_{metric}.png"
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        names.append(name)
    return names


def write_page(task: str, table: pd.DataFrame, quality: str, threshold: float, plots: list[str], command: str, out: Path) -> None:
    shown = table[["method", "scale", "forbidden_rate", "kl_classes", quality, "samples", "steps", "run_id"]].copy()
    shown["method"] = shown["method"].map(lambda m: LABELS.get(m, m))
    safe = table[table.forbidden_rate <= threshold].sort_values(quality)
    best = {LABELS.get(m, m): rows.iloc[0] for m, rows in safe.groupby("method")} if not safe.empty else {}
    lines = [f"# Results: {task}", "", "Regenerate with:", "", "```", command, "```", "",
             f"Headline: the best `{quality}` among runs with forbidden share <= {threshold} (the paper's high-safety regime).", ""]
    for label, row in sorted(best.items(), key=lambda kv: kv[1][quality]):
        lines.append(f"- {label}: {quality} {row[quality]:.4g} at scale {row.scale:g} (forbidden {row.forbidden_rate:.4f}, KL {row.kl_classes:.4f})")
    if not best:
        lines.append("- no run reached the safety threshold")
    lines += ["", shown.to_markdown(index=False, floatfmt=".4g"), ""] + [f"![{p}]({p})" for p in plots] + [""]
    (out / "README.md").write_text("\n".join(lines))
    table.to_csv(out / "points.csv", index=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="results page for one removal task")
    parser.add_argument("--task", default="mnist-remove-0")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--samples", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=json.loads, default=DEFAULT_GRID, help="JSON {method: [scales]}")
    parser.add_argument("--fixed", type=json.loads, default={}, help="JSON {method: {param: value}} held fixed")
    args = parser.parse_args(argv)
    store = Store(args.db)
    args.out.mkdir(parents=True, exist_ok=True)
    table = run_grid(args.task, args.grid, args.fixed, store, args.samples, args.steps, args.seed)
    quality, threshold = headline_of(store, args.task)
    plots = plot_curves(table, quality, args.out)
    command = "python -m negguide.bench.report " + " ".join(f"'{a}'" if " " in a or "{" in a else a for a in (argv if argv is not None else __import__("sys").argv[1:]))
    write_page(args.task, table, quality, threshold, plots, command, args.out)
    print(f"wrote {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
