"""Results pages per sampler: NP, SLD, DNG and the field's methods at matched safety on the exact tasks
(and MNIST), one page per (task, sampler), and one summary page that says which findings hold across samplers.

    python benchmarks/results_by_sampler.py [--db PATH] [--tasks gmm1d-remove-1,gmm2d-remove-3] [--samplers ddpm,ddim-0,...]

Each page is `python -m negguide.bench.report` with the sampler's flags (the command is printed on the page);
every sampler takes 20-50 steps as its users do (DDPM at 50, the quick protocol's 1,000-step pages are
docs/results/TASK). Runs
and calibrations are stored in the DuckDB file and reused, so the command resumes where it stopped.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from negguide.bench import report
from negguide.bench.run import RunRequest

SAMPLERS = {  # key -> (label, report flags); DDIM with eta 1 and Euler ancestral take DDPM's steps here (an identity, tested)
    "ddpm-50": ("DDPM (beta_tilde), 50 steps", ["--steps", "50"]),
    "ddim-0": ("DDIM eta 0, 50 steps", ["--sampler", "ddim", "--sampler-param", "eta=0", "--steps", "50"]),
    "dpm-solver++": ("DPM-Solver++(2M), 20 steps", ["--sampler", "dpm-solver++", "--steps", "20"]),
}
METHODS = {"gmm1d-remove-1": "np,sld,dng,np-delayed,apg,sega,safe-denoiser-theorem", "gmm2d-remove-3": "np,sld,dng,np-delayed,apg,sega,safe-denoiser-theorem",
           "mnist-remove-0": "np,sld,dng"}
TARGET = 0.01


def flags_request(task: str, flags: list[str]) -> RunRequest:
    """The RunRequest a report with these flags calibrates from."""
    values = dict(zip(flags[::2], flags[1::2]))
    settings = dict(value.split("=", 1) for key, value in zip(flags[::2], flags[1::2]) if key == "--sampler-param")
    return RunRequest(task=task, method="none", sampler=values.get("--sampler"), sampler_params=settings,
                      steps=int(values["--steps"]) if "--steps" in values else None)


def page(task: str, key: str, db: Path, out_root: Path, search: list[str]) -> Path:
    out = out_root / f"{task}-{key}"
    report.main(["--task", task, "--targets", str(TARGET), "--methods", METHODS[task], "--db", str(db), "--out", str(out),
                 *SAMPLERS[key][1], *search])
    return out


def summary_rows(task: str, key: str, out_root: Path) -> list[dict]:
    """Per method at the target, read back from its page: scale, quality with its interval, and the paired
    difference against DNG calibrated under the same sampler (the page's own numbers, nothing recomputed)."""
    lines = (out_root / f"{task}-{key}" / "README.md").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = [line for line in lines[first:first + next(i for i, line in enumerate(lines[first:]) if not line.startswith("|"))]]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    quality = header[header.index("monotone") - 1]
    paired = {}
    for line in lines:
        if line.startswith("- ") and " - DNG: " in line:
            label, rest = line[2:].split(" - DNG: ", 1)
            paired[label] = next((part.strip() for part in rest.split(";") if part.strip().startswith(quality)), "")
    rows = []
    for line in table[2:]:
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        method = cells["method"]
        row = {"task": task, "sampler": SAMPLERS[key][0], "method": method, "scale": cells["scale"], quality: cells.get(quality, "-")}
        if method in paired:
            diff = paired[method].removeprefix(quality).strip()
            significant = diff.endswith("*")
            worse = diff.startswith("+")  # quality is a distance here: lower is better
            row["minus DNG [95% CI]"] = diff.rstrip(" *") + (f" ({'DNG better' if worse else 'DNG worse'})" if significant else " (not significant)")
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--tasks", default="gmm1d-remove-1,gmm2d-remove-3")
    parser.add_argument("--samplers", default="ddpm-50,ddim-0,dpm-solver++")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--summary", default="samplers.md", help="the summary page's file name under --out")
    parser.add_argument("--existing", action="store_true", help="summarise only the pages already written (their runs stored); draw nothing new")
    parser.add_argument("--tolerance", help="passed to each page's calibration (default: the report's)")
    parser.add_argument("--max-runs", help="passed to each page's calibration (default: the report's)")
    args = parser.parse_args()
    search = [flag for name in ("tolerance", "max_runs") if getattr(args, name)
              for flag in (f"--{name.replace('_', '-')}", getattr(args, name))]
    rows = []
    for task in args.tasks.split(","):
        for key in args.samplers.split(","):
            if args.existing and not (args.out / f"{task}-{key}" / "README.md").exists():
                continue
            if not args.existing:
                page(task, key, args.db, args.out, search)
            rows += summary_rows(task, key, args.out)
    table = pd.DataFrame(rows).fillna("-")
    command = f"python benchmarks/results_by_sampler.py --db STORE --tasks {args.tasks} --samplers {args.samplers} --summary {args.summary}" + "".join(f" {flag}" for flag in search)
    text = "\n".join([
        "# Method rankings under each sampler", "", f"Regenerate with `{command}` (a DuckDB path of your choice; runs are reused).", "",
        f"Each method calibrated to a forbidden share <= {TARGET:g} under each sampler, then its quality with the 95% interval, and "
        "its paired difference against DNG calibrated under the same sampler (same noise; 95% paired-bootstrap interval; the quality "
        "metric is the task's: Wasserstein distance to the kept mixture on the exact tasks, lower is better). One page per task and "
        "sampler beside this one gives every calibration point.", "", table.to_markdown(index=False), ""])
    (args.out / args.summary).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
