"""`bench`: list, describe, run, sweep, leaderboard, train, dashboard."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from negguide.bench.usage import OneLineParser
from negguide.methods.errors import BenchError, MethodError


def _key_values(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--param expects key=value, got {pair!r}")
        if key.strip() in values:
            raise BenchError(f"--param {key.strip()} is given twice ({values[key.strip()]!r} and {value.strip()!r}); give it once "
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
    p.add_argument("--profile", help="task profile (default: quick)")
    p.add_argument("--samples", type=int)
    p.add_argument("--steps", type=int, help="respaced sampling steps (<= T)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, default=0)
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

    p = sub.add_parser("list", help="list methods, tasks or metrics")
    p.add_argument("what", choices=["methods", "tasks", "metrics"])
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("describe", help="describe one task or method")
    p.add_argument("kind", choices=["task", "method"])
    p.add_argument("name")
    p.add_argument("--json", action="store_true")

    _add_run_options(sub.add_parser("run", help="run one method on one task and store the result"))
    p = sub.add_parser("sweep", help="run a grid of parameter values (e.g. --param scale=1,2,5)")
    _add_run_options(p)

    p = sub.add_parser("leaderboard", help="print the leaderboard table")
    p.add_argument("--task")
    p.add_argument("--db", type=Path)

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
    else:
        from negguide.methods.registry import method_class, parameter_table

        cls = method_class(args.name)
        info = {"name": cls.name, "summary": cls.summary, "needs": list(cls.needs), "parameters": parameter_table(cls)}
    print(json.dumps(info, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0


def _request(args: argparse.Namespace, params: dict[str, str]):
    from negguide.bench.run import RunRequest

    return RunRequest(task=args.task, method=args.method, params=params, samples=args.samples, steps=args.steps,
                      batch_size=args.batch_size, seed=args.seed, profile=args.profile, prompts=args.prompts)


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


def _print_result(result: dict, as_json: bool, reused: bool) -> None:
    if as_json:
        print(json.dumps({**result, "reused": reused}, sort_keys=True))
        return
    note = " (stored result reused; --force recomputes)" if reused else ""
    print(f"run {result['run_id']}: {result['method']} on {result['task']}, {result['samples']} samples, {result['steps']} steps{note}")
    for name, value in sorted(result["metrics"].items()):
        print(f"  {name:<16} {value:.6g}")
    print(f"  artifacts: {result['artifacts_dir']}")


def cmd_run(args: argparse.Namespace) -> int:
    (outcome,) = _execute(args, [_request(args, _key_values(args.param))])
    _print_result(outcome.result, args.json, outcome.reused)
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


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from negguide.results.leaderboard import leaderboard_table

    store = _store(args)
    store.check(writing=False)
    table = leaderboard_table(store, args.task)
    if table.empty:
        print("the store is empty; fill it with e.g. `bench run --method dng --task mnist-remove-0`")
        return 0
    import pandas as pd

    with pd.option_context("display.max_rows", 200, "display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.rest[:1] == ["cifar10-forget"]:
        from negguide.bench.train_cifar10 import main as cifar10_main

        return int(cifar10_main(args.rest) or 0)
    from negguide.bench.train import main as train_main

    return int(train_main(args.rest) or 0)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from negguide.dashboard.launch import launch

    return launch(args.db, args.port, args.host)


COMMANDS = {"list": cmd_list, "describe": cmd_describe, "run": cmd_run, "sweep": cmd_sweep, "leaderboard": cmd_leaderboard,
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
