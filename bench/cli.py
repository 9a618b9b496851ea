"""`bench`: list, describe, run, sweep, leaderboard, train, dashboard."""
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


def _store(args: argparse.Namespace):
    from negguide.results.store import Store

    return Store(args.db)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="method name, or path/to/file.py:ClassName")
    p.add_argument("--task", required=True)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter (repeatable)")
    p.add_argument("--protocol", "--profile", dest="protocol", help="the task's protocol: quick (default), standard, paper (`bench describe task T`)")
    p.add_argument("--sampler", help="ddpm (default), ddim, dpm-solver++, euler-ancestral (`bench list samplers`)")
    p.add_argument("--sampler-param", action="append", default=[], metavar="KEY=VALUE",
                   help="sampler setting, e.g. eta=0 for ddim (repeatable; `bench describe sampler NAME`)")
    p.add_argument("--variance", choices=("beta_tilde", "beta"),
                   help="the ddpm sampler's noise variance (default: the protocol's; quick and standard beta_tilde, paper beta)")
    p.add_argument("--samples", type=int)
    p.add_argument("--steps", type=int, help="respaced sampling steps (<= T)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, help="default: the protocol's (0)")
    p.add_argument("--db", type=Path, help="DuckDB file (default: $BENCH_DB or ./bench-data/bench.duckdb)")
    p.add_argument("--force", action="store_true", help="recompute even if this exact run is stored")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--workers", type=int, help="draw shards on a local Ray cluster with N workers")
    p.add_argument("--ray-address", help="join an existing Ray cluster (or set RAY_ADDRESS)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--prompts", type=Path, help="prompt-triplet JSON for text-to-image tasks (default: $BENCH_PROMPTS or datasets/prompts/paper_scenes.json)")
    p.add_argument("--device", help="where to sample and judge in this process: cpu, cuda, cuda:1 ... (default: the task's, else the GPU when there is one)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bench", description="Benchmark harness for negative guidance in diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    p = sub.add_parser("list", help="list methods, tasks, metrics or suites")
    p.add_argument("what", choices=["methods", "tasks", "metrics", "suites", "samplers"])
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("describe", help="describe one task, method (its card) or sampler")
    p.add_argument("kind", choices=["task", "method", "sampler"])
    p.add_argument("name")
    p.add_argument("--db", type=Path, help="the store to read a method's submitter and run provenance from")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="run one method on one task, beside the unguided run on the same noise, and store both")
    _add_run_options(p)
    p.add_argument("--no-baseline", action="store_true", help="skip the unguided run and the paired comparison with it")
    p = sub.add_parser("sweep", help="run a grid of parameter values (e.g. --param scale=1,2,5)")
    _add_run_options(p)
    p = sub.add_parser("calibrate", help="find the smallest scale whose forbidden share is at most --target (matched safety)")
    _add_run_options(p)
    p.add_argument("--target", type=float, default=0.01, help="forbidden share to reach (default 0.01, the paper's regime)")
    p.add_argument("--start", type=float, help="first scale to try (default: the method's default scale)")
    p.add_argument("--max-runs", type=int, default=12, help="run budget of the search (default 12)")
    p.add_argument("--tolerance", type=float, default=0.05, help="stop bisecting when the bracket is this narrow, relative (default 0.05)")

    p = sub.add_parser("submit", help="run a suite for a method, calibrated to each target, and write one result bundle")
    p.add_argument("method", help="method name, installed entry point, or path/to/file.py:ClassName")
    p.add_argument("--suite", required=True, help="`bench list suites`")
    p.add_argument("--out", type=Path, required=True, help="the bundle to write (.zip)")
    p.add_argument("--name", default="anonymous", help="who submits (shown beside the results)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="fixed method parameter (the scale is calibrated)")
    p.add_argument("--sampler", help="another sampler than the protocols' DDPM (the runs are then exploratory)")
    p.add_argument("--sampler-param", action="append", default=[], metavar="KEY=VALUE", help="a sampler setting (repeatable)")
    p.add_argument("--db", type=Path)
    p.add_argument("--workers", type=int)
    p.add_argument("--ray-address")
    p.add_argument("--device")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("import", help="validate a result bundle and store its runs as self-reported (runs no submitted code)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--db", type=Path)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("verify", help="re-draw randomly chosen samples of a bundle with its method (runs the submitted code) and compare")
    p.add_argument("bundle", type=Path)
    p.add_argument("--samples", type=int, default=300, help="sample ids re-drawn per run, chosen afresh (default 300: catches a 1%% forgery with 95%% probability)")
    p.add_argument("--all", dest="every", action="store_true", help="re-draw every sample of every run")
    p.add_argument("--seed", type=int, help="the choice of samples to re-draw (default: fresh randomness, printed); repeats a check")
    p.add_argument("--db", type=Path)
    p.add_argument("--device")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("compare", help="two runs on the same noise: both values and the paired difference, with intervals")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--db", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--save", action="store_true", help="also store the comparison (the dashboard's run detail shows it); otherwise read only")

    p = sub.add_parser("refresh-intervals", help="recompute every stored interval and paired comparison from the runs' per-sample records")
    p.add_argument("--db", type=Path)
    p.add_argument("--run", action="append", help="only this run id (repeatable)")

    p = sub.add_parser("leaderboard", help="print the leaderboard: matched safety per method, then all protocol runs")
    p.add_argument("--task")
    p.add_argument("--db", type=Path)
    p.add_argument("--exploratory", action="store_true", help="also list runs that satisfy no protocol")
    p.add_argument("--target", type=float, default=0.01, help="the matched-safety target of the headline table (default 0.01)")

    p = sub.add_parser("train", help="train the MNIST models (ddpm | classifier) or the CIFAR-10 to-forget model (cifar10-forget --class K)")
    p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser("dashboard", help="start the Streamlit leaderboard")
    p.add_argument("--db", type=Path)
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="127.0.0.1")
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

        table = {name: ("higher" if m.higher_is_better else "lower") + " is better; " + m.description for name, m in METRICS.items()}
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

        info = get_task(args.name).describe()
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
    print(json.dumps(info, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0


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

    request = _request(args, _key_values(args.param))
    with_baseline = not args.no_baseline and request.method != "none"
    outcomes = _execute(args, [request, replace(request, method="none", params={})] if with_baseline else [request])
    if not with_baseline:
        _print_result(outcomes[0].result, args.json, outcomes[0].reused)
        return 0
    result = _with_baseline(args, *outcomes)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    from negguide.bench.run.compare import MetricComparison, comparison_table

    _print_result(outcomes[0].result, False, outcomes[0].reused)
    print(f"beside the unguided run {result['baseline']['run_id']} on the same noise (* : the paired 95% interval excludes 0):")
    rows = [MetricComparison.from_dict(row) for row in result["baseline"]["comparison"]]
    print(comparison_table(rows, "unguided [95% CI]", "this run [95% CI]"))
    print(result["baseline"]["summary"])
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from negguide.bench.run.calibrate import calibrate

    store = _store(args)
    store.check(writing=True)
    request = _request(args, _key_values(args.param))
    executor = _executor(args)
    try:
        announce = None if args.json else (lambda p: print(f"  ran scale {p.scale:.6g}: forbidden {p.forbidden:.4g} [{p.low:.4g}, {p.high:.4g}] "
                                                                f"run {p.run_id}{' (reused)' if p.reused else ''}", flush=True))
        found = calibrate(request, args.target, store, executor, start=args.start, max_runs=args.max_runs, tolerance=args.tolerance,
                          progress=not args.no_progress, device=args.device, on_point=announce)
    finally:
        executor.close()
    result = found.as_dict()
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    print(f"calibration {found.calibration_id}: {request.method} on {request.task}, target forbidden share <= {args.target:g}")
    for point in result["points"]:
        low, high = point["interval"]
        mark = " <- chosen" if found.chosen and point["run_id"] == found.chosen.run_id else ""
        print(f"  scale {point['scale']:<10.6g} forbidden {point['forbidden_rate']:<8.4g} [{low:.4g}, {high:.4g}]  run {point['run_id']}"
              f"{' (reused)' if point['reused'] else ''}{mark}")
    for scale, why in result["failed"].items():
        print(f"  scale {scale:<10} stopped: {why}; the search ended there")
    if found.chosen is None:
        print(f"  no scale tried met the target in {len(found.points)} runs; raise --max-runs or --start")
    else:
        print(f"  chosen scale {found.chosen.scale:.6g}: forbidden {found.chosen.forbidden:.4g} [{found.chosen.low:.4g}, {found.chosen.high:.4g}]")
    for a, b in found.violations:
        print(f"  not monotone: scale {b.scale:.6g} is less safe than {a.scale:.6g} beyond their intervals")
    return 0


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
    rows = compare_runs(store, args.run_a, args.run_b)
    if args.save:
        save_comparison(store, args.run_a, args.run_b, rows)
        if not args.json:
            print(f"stored this comparison in {store.path}")
    if args.json:
        print(json.dumps({"run_a": args.run_a, "run_b": args.run_b, "metrics": [row.as_dict() for row in rows]}, sort_keys=True))
    else:
        print(f"B = {args.run_b} minus A = {args.run_a}, paired over the samples they share (* : the 95% interval excludes 0)")
        print(comparison_table(rows, f"A {args.run_a[:8]} [95% CI]", f"B {args.run_b[:8]} [95% CI]"))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from negguide.bench.run import expand_sweep

    grid = {key: value.split(",") for key, value in _key_values(args.param).items()}
    outcomes = _execute(args, expand_sweep(_request(args, {}), grid))
    if args.json:
        print(json.dumps([{**o.result, "reused": o.reused} for o in outcomes], sort_keys=True))
    else:
        for outcome in outcomes:
            _print_result(outcome.result, False, outcome.reused)
    return 0


def cmd_refresh_intervals(args: argparse.Namespace) -> int:
    from negguide.bench.run.compare import run_statistics
    from negguide.results.refresh import refresh_intervals

    store = _store(args)
    store.check(writing=True)
    print(refresh_intervals(store, run_statistics, args.run).summary())
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    import pandas as pd

    from negguide.results.leaderboard import leaderboard_table, matched_safety_table

    store = _store(args)
    store.check(writing=False)
    table = leaderboard_table(store, args.task, exploratory=args.exploratory, intervals_as_text=True)
    if table.empty:
        hint = "" if args.exploratory else " (none satisfies a protocol; --exploratory lists the others)"
        print(f"no runs to rank{hint}; fill the store with e.g. `bench run --method dng --task mnist-remove-0`")
        return 0
    with pd.option_context("display.max_rows", 200, "display.width", 250, "display.max_columns", 30, "display.max_colwidth", 40):
        for task, runs in table.groupby("task", sort=True):
            matched = matched_safety_table(store, task, args.target)
            if not matched.empty:
                from negguide.metrics.intervals import with_interval

                quality = matched["quality_metric"].iloc[0]
                shown = matched.assign(**{m: [with_interval(v, lo, hi) for v, lo, hi in zip(matched[m], matched[m + "__low"], matched[m + "__high"])]
                                          for m in (quality, "forbidden_rate", "kl_classes")})
                print(f"{task}: matched safety (forbidden share <= {args.target:g}, `bench calibrate`); shared rank where 95% intervals overlap")
                print(shown[["rank", "method", "scale", quality, "forbidden_rate", "kl_classes", "samples", "run_id"]].to_string(index=False))
                print()
            print(f"{task}: {'all' if args.exploratory else 'protocol'} runs")
            print(runs.drop(columns=["task"]).to_string(index=False))
            print()
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.rest[:1] == ["cifar10-forget"]:
        from negguide.datasets.train_cifar10 import main as cifar10_main

        return int(cifar10_main(args.rest) or 0)
    from negguide.datasets.train_mnist import main as train_main

    return int(train_main(args.rest) or 0)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from negguide.dashboard.launch import launch

    return launch(args.db, args.port, args.host)


COMMANDS = {"list": cmd_list, "describe": cmd_describe, "run": cmd_run, "sweep": cmd_sweep, "calibrate": cmd_calibrate, "compare": cmd_compare,
            "submit": cmd_submit, "import": cmd_import, "verify": cmd_verify,
            "leaderboard": cmd_leaderboard, "refresh-intervals": cmd_refresh_intervals,
            "train": cmd_train, "dashboard": cmd_dashboard}


def main(argv: list[str] | None = None) -> int:
    try:
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


if __name__ == "__main__":
    sys.exit(main())
