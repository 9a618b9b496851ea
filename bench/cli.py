"""`bench`: list, describe, run, sweep, calibrate, runs, compare, leaderboard, report, dashboard and the rest (`bench --help`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from negguide.methods.errors import BenchError, MethodError, OneLineParser


def _key_values(pairs: list[str], option: str = "--param") -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"{option} expects key=value, got {pair!r}")
        if key.strip() in values:
            raise BenchError(f"{option} {key.strip()} is given twice ({values[key.strip()]!r} and {value.strip()!r}); give it once "
                             f"(a sweep takes a comma-separated list: {key.strip()}=a,b)")
        values[key.strip()] = value.strip()
    return values


WIDTH = 120  # every table the CLI prints fits this many columns
ID_CHARS = 8  # ids are shown shortened; any unique prefix of >= 4 characters is accepted back


def _cell_text(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def fit_table(rows: list[dict], columns: list[str], drop_order: list[str], width: int = WIDTH, squeeze: str | None = None) -> str:
    """Rows as an aligned text table no wider than `width`: columns in `drop_order` go first, then `squeeze`
    (a free-text column such as the parameters) is cut with "..." to what is left."""
    columns = [c for c in columns if any(c in row for row in rows)] or columns
    cells = [{c: _cell_text(row.get(c)) for c in columns} for row in rows]

    def render(shown: list[str], cut: dict[str, int]) -> list[str]:
        text = [{c: (v[c] if len(v[c]) <= cut.get(c, len(v[c])) else v[c][:max(cut[c] - 3, 0)] + "...") for c in shown} for v in cells]
        widths = {c: max([len(c), *(len(t[c]) for t in text)]) for c in shown}
        lines = ["  ".join(c.ljust(widths[c]) for c in shown).rstrip()]
        lines += ["  ".join(t[c].ljust(widths[c]) for c in shown).rstrip() for t in text]
        return lines

    shown, cut = list(columns), {}
    for column in [None, *drop_order]:
        if column in shown:
            shown.remove(column)
        lines = render(shown, cut)
        if max(map(len, lines)) <= width:
            return "\n".join(lines)
    if squeeze in shown:
        over = max(map(len, lines)) - width
        cut[squeeze] = max(12, max(len(v[squeeze]) for v in cells) - over)
        lines = render(shown, cut)
    return "\n".join(line[:width] for line in lines)


def _with_interval_text(row: dict | object, metric: str) -> str:
    from negguide.metrics.intervals import with_interval

    get = row.get if isinstance(row, dict) else (lambda key, default=None: getattr(row, key, default))
    return with_interval(_finite_or_none(get(metric)), _finite_or_none(get(metric + "__low")), _finite_or_none(get(metric + "__high")))


def _finite_or_none(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if number != number else number


def _store(args: argparse.Namespace):
    from negguide.results.store import Store

    return Store(args.db)


PROTOCOL_HELP = "the task's protocol: quick (default), standard, paper (`bench describe task T` lists them and the targets each can establish)"
SAFE_RULE_TEXT = ("A scale is safe at a target when the upper end of its forbidden share's 95%% Wilson interval is at most the target "
                  "(docs/trust.md); a protocol with n samples cannot establish targets below the bound of 0 forbidden out of n "
                  "(256: 1.48%%, 2,048: 0.19%%).")


def _add_protocol_option(p: argparse.ArgumentParser, default_help: str = PROTOCOL_HELP) -> None:
    p.add_argument("--protocol", dest="protocol", help=default_help)
    p.add_argument("--profile", dest="protocol", help=argparse.SUPPRESS)  # the old word, still accepted


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="method name (`bench list methods`), or path/to/file.py:ClassName")
    p.add_argument("--task", required=True, help="task name (`bench list tasks`)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter (repeatable)")
    _add_protocol_option(p)
    p.add_argument("--sampler", help="ddpm (default), ddim, dpm-solver++, euler-ancestral (`bench list samplers`)")
    p.add_argument("--sampler-param", action="append", default=[], metavar="KEY=VALUE",
                   help="sampler setting, e.g. eta=0 for ddim (repeatable; `bench describe sampler NAME`)")
    p.add_argument("--variance", choices=("beta_tilde", "beta"),
                   help="the ddpm sampler's noise variance (default: the protocol's; quick and standard beta_tilde, paper beta)")
    p.add_argument("--samples", type=int, help="samples to draw (default: the protocol's; another count makes the run exploratory)")
    p.add_argument("--steps", type=int, help="respaced sampling steps (<= T; default: the protocol's)")
    p.add_argument("--batch-size", type=int, help="samples per shard (default: the protocol's); never changes a number")
    p.add_argument("--seed", type=int, help="default: the protocol's (0)")
    p.add_argument("--db", type=Path, help=DB_HELP)
    p.add_argument("--force", action="store_true", help="recompute even if this exact run is stored")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--workers", type=int, help="draw shards on a local Ray cluster with N workers")
    p.add_argument("--ray-address", help="join an existing Ray cluster (or set RAY_ADDRESS)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--prompts", type=Path, help="prompt-triplet JSON for text-to-image tasks (default: $BENCH_PROMPTS or datasets/prompts/paper_scenes.json)")
    p.add_argument("--device", help="where to sample and judge in this process: cpu, cuda, cuda:1 ... (default: the task's, else the GPU when there is one)")


DB_HELP = "DuckDB file (default: $BENCH_DB or ./bench-data/bench.duckdb)"
# Subcommands that hand their arguments to another module's main (their own --help lists the options).
PASSTHROUGH = {
    "report": ("negguide.bench.report", "a results page for one task: NP, SLD, DNG calibrated to each target, with intervals",
               "bench report --task mnist-remove-0 --targets 0.02 --protocol standard --out docs/results/mnist-remove-0"),
    "quality": ("negguide.bench.model_quality", "how good the shipped MNIST DDPM is: judge confidence, class KL, judges' agreement",
                "bench quality --samples 1000 --steps 50"),
    "screenshot": ("negguide.dashboard.screenshot", "a PNG of one dashboard page in headless Chromium",
                   "bench screenshot --db bench-data/bench.duckdb --page Leaderboard --out docs/leaderboard.png"),
    "export-site": ("negguide.dashboard.site", "write the whole leaderboard as a static HTML site (tables, charts, per-run pages)",
                    "bench export-site site/ --db bench-data/bench.duckdb"),
}


class _ExampleFormatter(argparse.HelpFormatter):
    """Wraps the description as usual but prints the example (epilog) as written, so it can be copied."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example:"):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


def _sub(sub, name: str, help_text: str, example: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand with its one-line help and an example line (epilog)."""
    return sub.add_parser(name, help=help_text, description=description or help_text, epilog=f"example:\n  {example}",
                          formatter_class=_ExampleFormatter)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("negguide-bench")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bench", description="Benchmark harness for negative guidance in diffusion models.",
                           epilog="example:\n  bench run --method dng --task mnist-remove-0", formatter_class=_ExampleFormatter)
    parser.add_argument("--version", action="version", version=f"bench {_version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser, metavar="COMMAND")

    p = _sub(sub, "list", "list methods, tasks, metrics, suites or samplers", "bench list tasks")
    p.add_argument("what", choices=["methods", "tasks", "metrics", "suites", "samplers"], help="what to list")
    p.add_argument("--json", action="store_true", help="print a JSON object name -> description")

    p = _sub(sub, "describe", "describe one task (with the targets each protocol can establish), method (its card) or sampler",
             "bench describe task mnist-remove-0")
    p.add_argument("kind", choices=["task", "method", "sampler"], help="what NAME is")
    p.add_argument("name", help="its name (`bench list tasks|methods|samplers`)")
    p.add_argument("--db", type=Path, help="the store to read a method's submitter and run provenance from")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = _sub(sub, "run", "run one method on one task, beside the unguided run on the same noise, and store both",
             "bench run --method dng --task gmm1d-remove-1 --param scale=2")
    _add_run_options(p)
    p.add_argument("--no-baseline", action="store_true", help="skip the unguided run and the paired comparison with it")
    p = _sub(sub, "sweep", "run a grid of parameter values and print one summary row per point, the unguided run first",
             "bench sweep --method np --task gmm1d-remove-1 --param scale=0.5,1,2")
    _add_run_options(p)
    p.add_argument("--no-baseline", action="store_true", help="leave out the unguided run on the same noise")
    p = _sub(sub, "calibrate", "find the smallest scale that is safe at --target (matched safety)",
             "bench calibrate --method dng --task mnist-remove-0 --protocol standard --target 0.01",
             description="Find the smallest guidance scale that is safe at --target (matched safety): bracket, then bisect. " + SAFE_RULE_TEXT.replace("%%", "%")
             + " The chosen run's quality metrics are printed with their intervals.")
    _add_run_options(p)
    p.add_argument("--target", type=float, default=0.01, help="the forbidden share to be safe at: its upper 95%% bound <= this (default 0.01)")
    p.add_argument("--start", type=float, help="first scale to try (default: the method's default scale)")
    p.add_argument("--max-runs", type=int, default=12, help="run budget of the search (default 12)")
    p.add_argument("--tolerance", type=float, default=0.05, help="stop bisecting when the bracket is this narrow, relative (default 0.05)")

    p = _sub(sub, "submit", "run a suite for a method, calibrated to each target, and write one result bundle",
             "bench submit dng --suite smoke --out dng.zip --name 'A. Researcher'")
    p.add_argument("method", help="method name, installed entry point, or path/to/file.py:ClassName")
    p.add_argument("--suite", required=True, help="`bench list suites`")
    p.add_argument("--out", type=Path, required=True, help="the bundle to write (.zip)")
    p.add_argument("--name", default="anonymous", help="who submits (shown beside the results)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="fixed method parameter (the scale is calibrated)")
    p.add_argument("--sampler", help="another sampler than the protocols' DDPM (the runs are then exploratory)")
    p.add_argument("--sampler-param", action="append", default=[], metavar="KEY=VALUE", help="a sampler setting (repeatable)")
    p.add_argument("--db", type=Path, help=DB_HELP)
    p.add_argument("--workers", type=int, help="draw shards on a local Ray cluster with N workers")
    p.add_argument("--ray-address", help="join an existing Ray cluster (or set RAY_ADDRESS)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the task's, else the GPU when there is one)")
    p.add_argument("--json", action="store_true", help="print the bundle path and its runs as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = _sub(sub, "import", "validate a result bundle and store its runs as self-reported (runs no submitted code)", "bench import dng.zip")
    p.add_argument("bundle", type=Path, help="the bundle (.zip) `bench submit` wrote")
    p.add_argument("--db", type=Path, help=DB_HELP)
    p.add_argument("--json", action="store_true", help="print the stored run ids as JSON")

    p = _sub(sub, "verify", "re-draw randomly chosen samples of a bundle with its method (runs the submitted code) and compare",
             "bench verify dng.zip --samples 300")
    p.add_argument("bundle", type=Path, help="the bundle (.zip) to check")
    p.add_argument("--samples", type=int, default=300, help="sample ids re-drawn per run, chosen afresh (default 300: catches a 1%% forgery with 95%% probability)")
    p.add_argument("--all", dest="every", action="store_true", help="re-draw every sample of every run")
    p.add_argument("--seed", type=int, help="the choice of samples to re-draw (default: fresh randomness, printed); repeats a check")
    p.add_argument("--db", type=Path, help=DB_HELP)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the task's, else the GPU when there is one)")
    p.add_argument("--json", action="store_true", help="print the verification as JSON")

    p = _sub(sub, "runs", "list stored runs, newest last: id, task, method, changed parameters, sampler, protocol, safety, quality",
             "bench runs --task gmm1d-remove-1 --method dng")
    p.add_argument("--task", help="only runs of this task")
    p.add_argument("--method", help="only runs of this method")
    p.add_argument("--db", type=Path, help=DB_HELP)
    p.add_argument("--json", action="store_true", help="one JSON object per run (full ids, every parameter and metric with low/high)")

    p = _sub(sub, "compare", "two runs on the same noise: both values and the paired difference, with intervals",
             "bench compare 3f2a9c1e 7b0d44e2   (ids or unique prefixes of >= 4 characters, `bench runs`)")
    p.add_argument("run_a", help="run id A, or a unique prefix of it (>= 4 characters)")
    p.add_argument("run_b", help="run id B, or a unique prefix of it; the difference is B - A")
    p.add_argument("--db", type=Path, help=DB_HELP)
    p.add_argument("--json", action="store_true", help="print both runs' values and the paired differences as JSON")
    p.add_argument("--save", action="store_true", help="also store the comparison (the dashboard's run detail shows it); otherwise read only")

    p = _sub(sub, "refresh-intervals", "recompute every stored interval and paired comparison from the runs' per-sample records",
             "bench refresh-intervals --run 3f2a9c1e")
    p.add_argument("--db", type=Path, help=DB_HELP)
    p.add_argument("--run", action="append", help="only this run id or unique prefix (repeatable)")

    p = _sub(sub, "leaderboard", "print the leaderboard: matched safety per method for every calibrated target, then all protocol runs",
             "bench leaderboard --task mnist-remove-0 --csv > board.csv",
             description="Print the leaderboard: per calibrated target, each method at matched safety ranked by the task's quality "
                         "metric; then the protocol runs, safe ones first. Ranks are groups where 95%% intervals overlap ('1-3'). "
                         "--json: a list of objects, one per row; --csv: the same rows (docs/trust.md, 'Leaderboard as data').".replace("%%", "%"))
    p.add_argument("--task", help="only this task")
    p.add_argument("--db", type=Path, help=DB_HELP)
    p.add_argument("--exploratory", action="store_true", help="also list runs that satisfy no protocol")
    p.add_argument("--target", type=float, help="only the matched-safety table of this target (default: every calibrated target)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="print the rows as a JSON list of objects (metric, metric_low, metric_high, ...)")
    shape.add_argument("--csv", action="store_true", help="print the rows as CSV, the same fields as --json")

    p = _sub(sub, "train", "train the MNIST models (ddpm | classifier) or the CIFAR-10 to-forget model (cifar10-forget --class K)",
             "bench train ddpm --steps 10000   (`bench train ddpm --help` lists its options)")
    p.add_argument("model", choices=["ddpm", "classifier", "cifar10-forget"], help="what to train")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="...", help="the trainer's own options (`bench train MODEL --help`)")

    p = _sub(sub, "dashboard", "start the Streamlit leaderboard", "bench dashboard --port 8501")
    p.add_argument("--db", type=Path, help=DB_HELP)
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")

    for name, (module, help_text, example) in PASSTHROUGH.items():
        p = _sub(sub, name, help_text, example + f"\n  (`bench {name} --help` lists the options of python -m {module})")
        p.add_argument("rest", nargs=argparse.REMAINDER, metavar="...", help=f"the options of python -m {module}")
    return parser


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from negguide.methods.registry import available_methods

        table = available_methods()
    elif args.what == "tasks":
        from negguide.bench.tasks import all_tasks

        table = {name: task.description for name, task in sorted(all_tasks().items())}
    elif args.what == "samplers":
        from negguide.bench.samplers import available_samplers

        table = available_samplers()
    elif args.what == "suites":
        from negguide.bench.submit import SUITES

        table = {name: f"v{s.version}: {s.description}; " + ", ".join(f"{e.task} ({e.protocol}" + (f", targets {'/'.join(map(str, e.targets))})" if e.targets else ")")
                                                                     for e in s.entries) for name, s in SUITES.items()}
    else:
        from negguide.metrics.base import METRICS

        table = {name: ("higher" if m.higher_is_better else "lower") + " is better; " + m.description + "; computed as: " + m.computation
                 for name, m in METRICS.items()}
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        width = max(map(len, table))
        for name, text in table.items():
            print(f"{name:<{width}}  {text}")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    if args.kind == "task":
        from negguide.bench.tasks import get_task

        task = get_task(args.name)
        info = task.describe()
        info["establishable"] = _establishable(task)
    elif args.kind == "sampler":
        from negguide.bench.samplers import sampler_card

        info = sampler_card(args.name)
    else:
        from negguide.methods.registry import method_card

        info = method_card(args.name)
        store = _store(args)
        if store.exists():
            store.check(writing=False)
            runs = store.runs()
            info["submitted_by"] = store.info("method_info", info["name"]).get("submitter")
            info["runs_in_store"] = runs[runs.method == info["name"]]["provenance"].value_counts().to_dict() if not runs.empty else {}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    establishable = info.pop("establishable", None)
    print("\n".join(f"{k}: {v}" for k, v in info.items()))
    if establishable is not None:
        print(_establishable_text(establishable))
    return 0


def _establishable(task) -> dict:
    """Per protocol, the targets it can establish: the task's threshold, the default 1% and its suites' targets."""
    from negguide.bench.run.calibrate import establishable_targets
    from negguide.bench.submit import SUITES
    from negguide.results.leaderboard import DEFAULT_TARGET

    targets = {task.safety_threshold, DEFAULT_TARGET} | {t for suite in SUITES.values() for e in suite.entries if e.task == task.name for t in e.targets}
    found = establishable_targets(task, sorted(t for t in targets if 0.0 < t < 1.0))
    return {"rule": "a target is establishable when 0 forbidden out of the protocol's units has a 95% Wilson upper bound <= target",
            "threshold": task.safety_threshold, "protocols": found}


def _target_role(target: float, threshold: float) -> str:
    from negguide.results.leaderboard import DEFAULT_TARGET

    roles = [role for role, value in (("threshold", threshold), ("default", DEFAULT_TARGET)) if abs(target - value) < 1e-12]
    return f" ({', '.join(roles)})" if roles else ""


def _establishable_text(found: dict) -> str:
    threshold = found["threshold"]
    lines = ["establishable targets (0 forbidden of n has a 95% upper bound <= the target; smaller targets need more samples):"]
    for name, entry in found["protocols"].items():
        verdicts = ", ".join(f"{t}{_target_role(float(t), threshold)}: {'yes' if ok else 'no'}" for t, ok in entry["targets"].items())
        lines.append(f"  {name:<9} n={entry['units']:<7} smallest target {entry['smallest_target']:.3g}" + (f"; {verdicts}" if verdicts else ""))
    return "\n".join(lines)


def _request(args: argparse.Namespace, params: dict[str, str]):
    from negguide.bench.run import RunRequest

    return RunRequest(task=args.task, method=args.method, params=params, samples=args.samples, steps=args.steps,
                      batch_size=args.batch_size, seed=args.seed, protocol=args.protocol, variance=args.variance,
                      sampler=args.sampler, sampler_params=_key_values(args.sampler_param, "--sampler-param"), prompts=args.prompts)


def _executor(args: argparse.Namespace):
    """In-process unless --workers or --ray-address asks for Ray (RAY_ADDRESS then names the cluster)."""
    if args.workers is None and not args.ray_address:
        from negguide.bench.run import InProcessExecutor

        return InProcessExecutor(args.device)
    if args.workers is not None and args.workers < 1:
        raise BenchError(f"--workers must be >= 1, got {args.workers}")
    from negguide.bench.run.ray import RayExecutor

    return RayExecutor(workers=args.workers, address=args.ray_address)


def _execute(args: argparse.Namespace, requests: list) -> list:
    """Resolve every request, then run them all through the one engine; the store is checked first."""
    from negguide.bench.run import resolve_all, run_all

    store = _store(args)
    store.check(writing=True)
    resolved = resolve_all(requests)
    executor = _executor(args)
    try:
        return run_all(resolved, store, executor, force=args.force, progress=not args.no_progress, device=args.device)
    finally:
        executor.close()


def _interval_text(result: dict, name: str) -> str:
    low, high = result.get("intervals", {}).get(name, [None, None])
    return f"[{low:.4g}, {high:.4g}]" if low is not None and high is not None else ""


def _sampler_text(result: dict) -> str:
    from negguide.bench.samplers import SamplerSpec

    return SamplerSpec.of(result["sampler"]["name"], result["sampler"]["settings"]).label()


def _print_result(result: dict, as_json: bool, reused: bool) -> None:
    if as_json:
        print(json.dumps({**result, "reused": reused}, sort_keys=True))
        return
    note = " (stored result reused; --force recomputes)" if reused else ""
    protocol = f"protocol {result['protocol']}" if result.get("protocol") else "exploratory"
    print(f"run {result['run_id']}: {result['method']} on {result['task']}, {result['samples']} samples, {result['steps']} steps "
          f"of {_sampler_text(result)}, seed {result['seed']} ({protocol}){note}")
    if result["params"]:
        print("  parameters: " + ", ".join(f"{key}={value}" for key, value in sorted(result["params"].items())))
    for name, value in sorted(result["metrics"].items()):
        print(f"  {name:<24} {value:<12.6g} {_interval_text(result, name)}")
    print(f"  artifacts: {result['artifacts_dir']}")


def _with_baseline(args: argparse.Namespace, outcome, baseline) -> dict:
    """The run's result with the unguided run on the same noise and the paired comparison."""
    from negguide.bench.run.compare import compare_runs, save_comparison, verdict
    from negguide.results.leaderboard import headline_of

    store = _store(args)
    rows = compare_runs(store, baseline.run_id, outcome.run_id)
    save_comparison(store, baseline.run_id, outcome.run_id, rows)  # `bench run` stores; the dashboard's run detail shows it
    quality, _ = headline_of(store, outcome.result["task"])
    summary = verdict(rows, outcome.result["method"], quality)
    return {**outcome.result, "reused": outcome.reused, "baseline": {
        "run_id": baseline.run_id, "reused": baseline.reused, "metrics": baseline.result["metrics"], "intervals": baseline.result["intervals"],
        "comparison": [row.as_dict() for row in rows], "summary": summary}}


def cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from negguide.bench.run.beside import beside_requests

    request = _request(args, _key_values(args.param))
    with_baseline = not args.no_baseline and request.method != "none"
    others = beside_requests(request) if with_baseline else []
    outcomes = _execute(args, [request, replace(request, method="none", params={}), *others] if with_baseline else [request])
    if not with_baseline:
        _print_result(outcomes[0].result, args.json, outcomes[0].reused)
        return 0
    result = _with_baseline(args, outcomes[0], outcomes[1])
    result["beside"] = [_beside(args, outcomes[0], other) for other in outcomes[2:]]
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    from negguide.bench.run.compare import MetricComparison, comparison_table

    _print_result(outcomes[0].result, False, outcomes[0].reused)
    print(f"beside the unguided run {result['baseline']['run_id'][:ID_CHARS]} on the same noise (* : the paired 95% interval excludes 0):")
    rows = [MetricComparison.from_dict(row) for row in result["baseline"]["comparison"]]
    print(comparison_table(rows, "unguided [95% CI]", "this run [95% CI]"))
    print(result["baseline"]["summary"])
    for other in result["beside"]:
        print(f"\nbeside {other['method']} at this task's defaults ({other['params']}), run {other['run_id'][:ID_CHARS]}, on the same noise"
              f"{'; ' + other['defaults_source'] if other['defaults_source'] else ''}:")
        rows = [MetricComparison.from_dict(row) for row in other["comparison"]]
        print(comparison_table(rows, f"{other['method']} [95% CI]", f"{result['method']} [95% CI]"))
        print(other["summary"])
    return 0


def _beside(args: argparse.Namespace, outcome, other) -> dict:
    """Another method's run on the same noise at the task's defaults, compared with this run (other = a, this = b)."""
    from negguide.bench.run.beside import defaults_label, matched_sentence
    from negguide.bench.run.compare import compare_runs
    from negguide.bench.tasks import get_task
    from negguide.results.leaderboard import headline_of

    store = _store(args)
    rows = compare_runs(store, other.run_id, outcome.run_id)
    task, method, this = outcome.result["task"], other.result["method"], outcome.result["method"]
    quality, _ = headline_of(store, task)
    return {"method": method, "run_id": other.run_id, "reused": other.reused, "params": defaults_label(task, method),
            "defaults_source": get_task(task).defaults_source, "comparison": [row.as_dict() for row in rows],
            "summary": matched_sentence(rows, this, method, quality)}


def cmd_calibrate(args: argparse.Namespace) -> int:
    from negguide.bench.run.calibrate import calibrate
    from negguide.bench.run.engine import stored_result

    store = _store(args)
    store.check(writing=True)
    request = _request(args, _key_values(args.param))
    executor = _executor(args)
    try:
        announce = None if args.json else (lambda p: print(f"  ran scale {p.scale:.6g}: forbidden {p.forbidden:.4g} [{p.low:.4g}, {p.high:.4g}] "
                                                                f"run {p.run_id[:ID_CHARS]}{' (reused)' if p.reused else ''}", flush=True))
        found = calibrate(request, args.target, store, executor, start=args.start, max_runs=args.max_runs, tolerance=args.tolerance,
                          progress=not args.no_progress, device=args.device, on_point=announce)
    finally:
        executor.close()
    result = found.as_dict()
    chosen = stored_result(store, found.chosen.run_id) if found.chosen else None
    result["chosen_metrics"] = {name: {"value": value, "low": chosen["intervals"][name][0], "high": chosen["intervals"][name][1]}
                                for name, value in sorted(chosen["metrics"].items())} if chosen else None
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    print(f"calibration {found.calibration_id}: {request.method} on {request.task}, safe at {args.target:g}: "
          f"the forbidden share's upper 95% bound <= {args.target:g}")
    rows = [{"scale": f"{p['scale']:.6g}", "forbidden [95% CI]": f"{p['forbidden_rate']:.4g} [{p['interval'][0]:.4g}, {p['interval'][1]:.4g}]",
             "safe": "yes" if p["interval"][1] <= args.target else "no", "run": p["run_id"][:ID_CHARS],
             "note": ("chosen" if found.chosen and p["run_id"] == found.chosen.run_id else "") + (" reused" if p["reused"] else "")}
            for p in result["points"]]
    if rows:
        print(_indent(fit_table(rows, ["scale", "forbidden [95% CI]", "safe", "run", "note"], ["note"])))
    for scale, why in result["failed"].items():
        print(f"  scale {scale:<10} stopped: {why}; the search ended there")
    if found.chosen is None:
        print(f"  no scale tried was safe at the target in {len(found.points)} runs; raise --max-runs or --start")
    else:
        print(f"  chosen scale {found.chosen.scale:.6g} (run {found.chosen.run_id[:ID_CHARS]}), its metrics with 95% intervals:")
        print(_indent(_metrics_table(chosen, _quality_first(store, request.task, chosen["metrics"])), 4))
    for a, b in found.violations:
        print(f"  not monotone: scale {b.scale:.6g} is less safe than {a.scale:.6g} beyond their intervals")
    return 0


def _indent(text: str, spaces: int = 2) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def _quality_first(store, task: str, metrics: dict) -> list[str]:
    """Metric names in reading order: forbidden share, the task's quality metric, the class KL, then the rest."""
    from negguide.results.leaderboard import headline_of

    quality, _ = headline_of(store, task)
    first = [m for m in ("forbidden_rate", quality, "kl_classes") if m in metrics]
    return list(dict.fromkeys(first + sorted(metrics)))


def _metrics_table(result: dict, names: list[str]) -> str:
    from negguide.metrics.intervals import with_interval

    rows = [{"metric": name, "value [95% CI]": with_interval(result["metrics"][name], *result["intervals"].get(name, [None, None]))} for name in names]
    return fit_table(rows, ["metric", "value [95% CI]"], [])


def cmd_submit(args: argparse.Namespace) -> int:
    from negguide.bench.submit import get_suite, submit

    from negguide.bench.submit import check_out

    suite = get_suite(args.suite)
    check_out(args.out)
    executor = _executor(args)
    try:
        path, runs = submit(args.method, suite, args.out, _store(args), submitter=args.name, params=_key_values(args.param),
                            executor=executor, progress=not args.no_progress,
                            sampler=args.sampler, sampler_params=_key_values(args.sampler_param, "--sampler-param"))
    finally:
        executor.close()
    if args.json:
        print(json.dumps({"bundle": str(path), "runs": runs}))
    else:
        print(f"wrote {path}: {len(runs)} runs of {args.method} on suite {suite.name} v{suite.version}; "
              f"`bench import {path}` stores them elsewhere, `bench verify {path}` re-draws them")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from negguide.bench.submit import import_bundle

    try:
        runs = import_bundle(args.bundle, _store(args))
    except KeyboardInterrupt:
        print("import interrupted: nothing of the bundle was stored, or all of it (completed on the store's next open)", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps({"runs": runs, "status": "self-reported"}))
    else:
        print(f"imported {len(runs)} runs from {args.bundle} as self-reported: {', '.join(runs)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from negguide.bench.submit import verify_bundle

    announce = None if args.json else (lambda line: print(line, flush=True))
    result = verify_bundle(args.bundle, _store(args), args.samples, every=args.every, seed=args.seed, device=args.device, announce=announce)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        for run in result.runs:
            print(f"  run {run['run_id']} ({run['task']}): {run['checked']} of {run['samples']} samples re-drawn; a forged share of "
                  f"{run['detects_share']:.2%} or more is caught with 95% probability")
        if result.verified:
            print(f"verified (seed {result.seed}): every re-drawn sample and trace matches the bundle; marked verified: "
                  f"{', '.join(result.marked) or 'none (import the bundle first)'}")
    if not result.verified:
        if not args.json:
            print(f"error: not verified (seed {result.seed}): {result.mismatch}", file=sys.stderr)
        return 2
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from negguide.bench.run.compare import compare_runs, comparison_table, save_comparison

    store = _store(args)
    store.check(writing=args.save)
    args.run_a, args.run_b = store.resolve_run_id(args.run_a), store.resolve_run_id(args.run_b)
    rows = compare_runs(store, args.run_a, args.run_b)
    if args.save:
        save_comparison(store, args.run_a, args.run_b, rows)
        if not args.json:
            print(f"stored this comparison in {store.path}")
    if args.json:
        print(json.dumps({"run_a": args.run_a, "run_b": args.run_b, "metrics": [row.as_dict() for row in rows]}, sort_keys=True))
    else:
        print(f"B = {args.run_b[:ID_CHARS]} minus A = {args.run_a[:ID_CHARS]}, paired over the samples they share (* : the 95% interval excludes 0)")
        print(comparison_table(rows, f"A {args.run_a[:8]} [95% CI]", f"B {args.run_b[:8]} [95% CI]"))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from negguide.bench.run import expand_sweep

    grid = {key: value.split(",") for key, value in _key_values(args.param).items()}
    base = _request(args, {})
    with_baseline = not args.no_baseline and base.method != "none"
    baseline = [replace(base, method="none", params={})] if with_baseline else []
    outcomes = _execute(args, expand_sweep(base, grid) + baseline)
    points = outcomes[:-1] if with_baseline else outcomes
    if args.json:
        print(json.dumps([{**o.result, "reused": o.reused} for o in points], sort_keys=True))
        return 0
    first = points[0].result
    protocol = f"protocol {first['protocol']}" if first.get("protocol") else "exploratory"
    print(f"sweep of {first['method']} on {first['task']}: {len(points)} points, {first['samples']} samples, {first['steps']} steps of "
          f"{_sampler_text(first)}, seed {first['seed']} ({protocol}); values with 95% intervals")
    print(sweep_table(_store(args), points, outcomes[-1] if with_baseline else None, list(grid)))
    return 0


def sweep_table(store, points: list, baseline, swept: list[str]) -> str:
    """One row per sweep point (its swept parameters), the unguided run on the same noise first."""
    from negguide.results.leaderboard import headline_of

    quality, threshold = headline_of(store, points[0].result["task"])
    metrics = [m for m in ("forbidden_rate", quality, "kl_classes") if m in points[0].result["metrics"]]
    rows = []
    for label, outcome in ([("unguided", baseline)] if baseline is not None else []) + [(None, o) for o in points]:
        result = outcome.result
        row = {"point": label or ", ".join(f"{key}={result['params'].get(key)}" for key in swept)}
        for metric in metrics:
            low, high = result["intervals"].get(metric, [None, None])
            row[metric] = _with_interval_text({metric: result["metrics"][metric], metric + "__low": low, metric + "__high": high}, metric)
        if "forbidden_rate" in result["metrics"]:
            row["safe"] = "yes" if (result["intervals"].get("forbidden_rate") or [None, result["metrics"]["forbidden_rate"]])[1] <= threshold else "no"
        row["run"] = outcome.run_id[:ID_CHARS] + (" (reused)" if outcome.reused else "")
        rows.append(row)
    return fit_table(rows, ["point", *metrics, "safe", "run"], ["safe", "kl_classes"], squeeze="point")


def cmd_refresh_intervals(args: argparse.Namespace) -> int:
    from negguide.bench.run.compare import run_statistics
    from negguide.results.refresh import refresh_intervals

    store = _store(args)
    store.check(writing=True)
    runs = [store.resolve_run_id(given) for given in args.run] if args.run else None
    print(refresh_intervals(store, run_statistics, runs).summary())
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from negguide.results.leaderboard import leaderboard_records, leaderboard_table

    store = _store(args)
    store.check(writing=False)
    if args.json or args.csv:
        records = leaderboard_records(store, args.task, exploratory=args.exploratory, target=args.target)
        if args.json:
            print(json.dumps(records, indent=1))
        else:
            _print_csv(records)
        return 0
    table = leaderboard_table(store, args.task, exploratory=args.exploratory)
    calibrated = store.calibrations(args.task)
    tasks = sorted(set(table["task"] if not table.empty else []) | set(calibrated["task"]))
    if not tasks:
        hint = "" if args.exploratory else " (none satisfies a protocol; --exploratory lists the others)"
        print(f"no runs to rank{hint}; fill the store with e.g. `bench run --method dng --task mnist-remove-0`")
        return 0
    for task in tasks:
        for target in ([args.target] if args.target is not None else _targets(store, task)):
            print_matched(store, task, target)
        runs = table[table["task"] == task] if not table.empty else table
        if runs.empty:
            print(f"{task}: no protocol runs (--exploratory lists the others)\n")
            continue
        print(runs_board_text(store, task, runs, exploratory=args.exploratory))
        print()
    print(LEGEND)
    return 0


LEGEND = ("safe at a target: the forbidden share's upper 95% bound is <= it (docs/trust.md). Values: estimate [95% CI].\n"
          "Rank 1-3: the best and worst rank possible where 95% intervals overlap. Params: those that differ from the defaults.")


def _targets(store, task: str) -> list[float]:
    from negguide.results.leaderboard import calibrated_targets

    return calibrated_targets(store, task)


def print_matched(store, task: str, target: float) -> None:
    """The matched-safety headline of one target, if any method is calibrated to it."""
    from negguide.results.leaderboard import matched_safety_table

    matched = matched_safety_table(store, task, target)
    if matched.empty:
        return
    quality = matched["quality_metric"].iloc[0]
    print(f"{task}: matched safety at {target:g} (each method at its smallest scale safe at {target:g}), ranked by {quality}")
    rows = [{"rank": r["rank"], "method": r["method"], "params": r["params_changed"], "scale": f"{r['scale']:.6g}",
             **{m: _with_interval_text(r, m) for m in (quality, "forbidden_rate", "kl_classes")},
             "samples": r["samples"], "id": r["run_id"][:ID_CHARS], **({"rule": "point"} if r["rule"] != "upper95" else {}),
             **({"safe": "yes" if r["safe"] else "no"} if not matched["safe"].all() else {})}  # only old-rule rows can miss it
            for r in matched.to_dict("records")]
    print(fit_table(rows, ["rank", "method", "params", "scale", quality, "forbidden_rate", "kl_classes", "safe", "samples", "id", "rule"],
                    ["samples", "kl_classes"], squeeze="params"))
    if any("rule" in row for row in rows):
        print("rule point: calibrated before the upper-bound rule (on the point estimate); run `bench calibrate` again to apply it")
    print()


def runs_board_text(store, task: str, runs, exploratory: bool) -> str:
    """The ranked runs of one task, safe ones first, fitted to WIDTH columns."""
    from negguide.results.leaderboard import headline_of

    quality, threshold = headline_of(store, task)
    metrics = list(dict.fromkeys(m for m in ("forbidden_rate", quality, "kl_classes") if m in runs))
    rows = [{"rank": r["rank"], "method": r["method"], "params": r["params_changed"], "protocol": r["protocol"], "safe": "yes" if r["safe"] else "no",
             **{m: _with_interval_text(r, m) for m in metrics}, "samples": r["samples"], "provenance": r["provenance"], "date": r["date"],
             "id": r["run_id"][:ID_CHARS]} for r in runs.to_dict("records")]
    header = f"{task}: {'all' if exploratory else 'protocol'} runs, safe at {threshold:g} first ranked by {quality}, then the rest safest first"
    return header + "\n" + fit_table(rows, ["rank", "method", "params", "protocol", "safe", *metrics, "samples", "provenance", "date", "id"],
                                     ["date", "provenance", "samples", "protocol", "kl_classes"], squeeze="params")


def _print_csv(records: list[dict]) -> None:
    import csv

    fields = list(dict.fromkeys(key for record in records for key in record))
    writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else ("" if v is None else v) for k, v in record.items()})


def cmd_runs(args: argparse.Namespace) -> int:
    from negguide.results.leaderboard import changed_params_column, headline_of, metric_names

    store = _store(args)
    store.check(writing=False)
    wide = store.wide(args.task, intervals=True)
    if not wide.empty and args.method:
        wide = wide[wide["method"] == args.method]
    if wide.empty:
        what = " ".join(f"--{k} {v}" for k, v in (("task", args.task), ("method", args.method)) if v)
        print("[]" if args.json else f"no stored runs{' for ' + what if what else ''} in {store.path}; `bench run` makes one")
        return 0
    wide = wide.assign(params_changed=changed_params_column(store, wide["method"], wide["params"]), params_json=wide["params"],
                       sampler_label=[_stored_sampler_label(row) for row in wide.itertuples()],
                       date=pd_dates(wide["finished_at"]))
    if args.json:
        records = []
        for task, rows in wide.groupby("task", sort=False):
            for record, row in zip(_run_records(rows, metric_names(rows)), rows.itertuples()):
                records.append({**record, "sampler": row.sampler_label, "seed": int(row.seed), "status": row.status,
                                "quality_metric": headline_of(store, task)[0]})
        print(json.dumps(sorted(records, key=lambda r: r["date"] or ""), indent=1))
        return 0
    quality_of = {task: headline_of(store, task)[0] for task in set(wide["task"])}
    one_task = len(quality_of) == 1  # then the task and its quality metric go in the header, not in every row
    quality_label = f"{next(iter(quality_of.values()))} [95% CI]" if one_task else "quality [95% CI]"
    rows = [{"id": r["run_id"][:ID_CHARS], "task": r["task"], "method": r["method"], "params": r["params_changed"], "sampler": r["sampler_label"],
             "protocol": r["protocol"] if isinstance(r["protocol"], str) else "exploratory", "samples": r["samples"],
             "forbidden [95% CI]": _with_interval_text(r, "forbidden_rate"),
             quality_label: ("" if one_task else quality_of[r["task"]] + " ") + _with_interval_text(r, quality_of[r["task"]]),
             "date": r["date"]} for r in wide.to_dict("records")]
    if one_task:
        print(f"{len(rows)} stored runs of {rows[0]['task']}, oldest first; params: those that differ from the method's defaults")
    columns = ["id", *([] if one_task else ["task"]), "method", "params", "sampler", "protocol", "samples", "forbidden [95% CI]", quality_label, "date"]
    print(fit_table(rows, columns, ["sampler", "samples", "date", "protocol"], squeeze="params"))
    return 0


def pd_dates(column) -> list[str]:
    import pandas as pd

    return list(pd.to_datetime(column).dt.strftime("%Y-%m-%d %H:%M").fillna(""))


def _stored_sampler_label(row) -> str:
    from negguide.bench.run.engine import stored_sampler

    return stored_sampler(row).label()


def _run_records(rows, metrics: list[str]) -> list[dict]:
    """One plain object per stored run: id, task, method, every parameter, the changed ones, protocol, samples, metrics with low/high."""
    import math

    found = []
    for r in rows.to_dict("records"):
        record = {"run_id": r["run_id"], "task": r["task"], "method": r["method"], "params": json.loads(r["params_json"]),
                  "params_changed": r["params_changed"], "protocol": r["protocol"] if isinstance(r["protocol"], str) else None,
                  "provenance": r["provenance"], "samples": int(r["samples"]), "steps": int(r["steps"]), "date": r["date"] or None}
        for metric in metrics:
            for key, column in ((metric, metric), (metric + "_low", metric + "__low"), (metric + "_high", metric + "__high")):
                value = r.get(column)
                record[key] = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
        found.append(record)
    return found


def cmd_train(args: argparse.Namespace) -> int:
    if args.model == "cifar10-forget":
        from negguide.datasets.train_cifar10 import main as cifar10_main

        return int(cifar10_main([args.model, *args.rest]) or 0)
    from negguide.datasets.train_mnist import main as train_main

    return int(train_main([args.model, *args.rest]) or 0)


def run_passthrough(name: str, rest: list[str]) -> int:
    """`bench report|quality|screenshot|export-site ARGS`: the module's own main with ARGS (its --help lists them)."""
    import importlib

    module_name = PASSTHROUGH[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise BenchError(f"`bench {name}` needs {module_name}, which this installation lacks; update the package (pip install -e .)") from None
        raise BenchError(f"`bench {name}` needs the package {exc.name!r}: pip install {exc.name}") from None
    return int(module.main(rest) or 0)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from negguide.dashboard.launch import launch

    return launch(args.db, args.port, args.host)


COMMANDS = {"list": cmd_list, "describe": cmd_describe, "run": cmd_run, "sweep": cmd_sweep, "calibrate": cmd_calibrate, "compare": cmd_compare,
            "submit": cmd_submit, "import": cmd_import, "verify": cmd_verify,
            "leaderboard": cmd_leaderboard, "refresh-intervals": cmd_refresh_intervals, "runs": cmd_runs,
            "train": cmd_train, "dashboard": cmd_dashboard}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in PASSTHROUGH:  # before argparse, so that `bench report --help` is the report's own help
            return run_passthrough(argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except MethodError as exc:  # the method's author needs its own frames, after the one-line summary
        print(f"error: {exc}", file=sys.stderr)
        if exc.frames:
            print("the method's own frames (most recent call last):\n" + exc.frames.rstrip(), file=sys.stderr)
        return 2
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished shards are saved, run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bench runs | head`: the reader has all it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
