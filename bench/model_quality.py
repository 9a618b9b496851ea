"""Quality bar of a shipped MNIST model, unguided, against the real digits.

    python -m negguide.bench.model_quality --samples 1000 [--task mnist-pixel-remove-0] [--inception] --out docs/mnist-model

Draws unguided samples of the task's model (default `mnist-remove-0`, the latent model; the removed class plays
no part) through the engine's plan (the quick protocol's chain by default: 50 DDPM steps, beta_tilde, seed 0;
`--sampler`/`--sampler-param` as for `bench run`) and prints, with 95% intervals: the share the judge
classifies with p > 0.9 (target >= 0.92), the class histogram's KL to uniform (target <= 0.01; its plug-in
bias is about 9/(2n), so judge it at n >= 1,000), the judge-space Fréchet distance to all 5,000 digits, and
the share on which two independent judges (an SVM and an MLP, `datasets/mnist_judges.py`) agree (target: as
often as on real digits); beside them the same figures for real held-out digits (the judge's 1,000 held-out
digits; the independent judges' own 1,000). `--inception` adds the Inception FID to all 5,000 digits and its
cost. Writes quality.json and an unguided sample grid; the README's model figures come from here.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from negguide.bench.run.plan import RunRequest, resolve
from negguide.bench.run.shards import draw_shard, pick_device, runtime_for
from negguide.bench.tasks.mnist import reference_stats
from negguide.metrics.base import class_kl
from negguide.metrics.classes import class_histogram
from negguide.metrics.frechet import frechet_statistic
from negguide.metrics.intervals import Statistic
from negguide.results.artifacts import image_grid_png

CONFIDENT = 0.9
TARGETS = {"confident_share": (">=", 0.92), "kl_to_uniform": ("<=", 0.01)}
MODEL_FOLDERS = ("ddpm", "denoiser")  # the task detail that names the diffusion model's folder (pixel, latent)


def figures(records: dict, judges_agree: np.ndarray) -> dict[str, dict]:
    """Each figure of the bar with its 95% interval and sample count."""
    labels = records["label"]
    found = [Statistic.share("confident_share", records["confidence"] > CONFIDENT),
             class_kl("kl_to_uniform", labels, None, 10),
             frechet_statistic("fd_judge_all", records["features"], reference_stats(None)),
             Statistic.share("judges_agree", judges_agree)]
    out = {}
    for statistic in found:
        interval = statistic.interval()
        out[statistic.name] = {"value": statistic.value(), "low": interval.low, "high": interval.high, "n": statistic.units}
    return out


def unguided_samples(request: RunRequest):
    """Unguided samples of the task's model (the removed class plays no part), drawn shard by shard as a
    run's would be but not stored; the resolved run, the runtime, seconds."""
    resolved = resolve(request)
    device = pick_device(resolved.task)
    runtime = runtime_for(resolved.task, device)
    started = time.time()
    parts = [torch.from_numpy(draw_shard(job, device)["x"]) for job in resolved.shard_jobs(Path("not-saved"))]
    return torch.cat(parts), resolved, runtime, time.time() - started


def real_digit_figures(runtime) -> dict[str, dict]:
    """The bar's figures on real digits: the judge on its own held-out digits (`classifier_test`), the independent
    judges on theirs. Real digits are judged as images, whatever space the model samples in."""
    from negguide.datasets.mnist import load_mnist, mnist_splits, to_model_range
    from negguide.datasets.mnist_judges import independent_judges

    images, _ = load_mnist()
    records = runtime.judge_images(to_model_range(images[mnist_splits()["classifier_test"]]))
    judges = independent_judges()
    return figures(records, judges.agree(images[judges.held_out]))


def model_summary(details: dict) -> dict:
    """Training steps and parameter count of the task's diffusion model, from its shipped config.json."""
    folder = next(Path(details[key]) for key in MODEL_FOLDERS if key in details)
    config = json.loads((folder / "config.json").read_text())
    return {"folder": folder.name, "steps": config.get("init_steps", 0) + config["steps_done"], "parameters": config["param_count"]}


def verdict(name: str, value: float) -> str:
    if name not in TARGETS:
        return ""
    op, bound = TARGETS[name]
    met = value >= bound if op == ">=" else value <= bound
    return f"target {op} {bound}: {'met' if met else 'NOT met'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist-remove-0", help="an MNIST task whose model to measure (default: the latent model)")
    parser.add_argument("--samples", type=int, default=1000, help="unguided samples to judge (default 1000)")
    parser.add_argument("--steps", type=int, default=50, help="respaced sampling steps (default 50, the quick chain)")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per shard (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--sampler", help="as for `bench run` (default: the quick protocol's, DDPM with beta_tilde)")
    parser.add_argument("--sampler-param", action="append", default=[], metavar="KEY=VALUE", help="a sampler setting (repeatable)")
    parser.add_argument("--inception", action="store_true", help="also the Inception FID against all 5,000 digits (minutes on a CPU)")
    parser.add_argument("--out", type=Path, required=True, help="folder for quality.json and unguided_grid.png")
    args = parser.parse_args(argv)
    settings = dict(pair.split("=", 1) for pair in args.sampler_param)
    xt, resolved, runtime, sampling_s = unguided_samples(RunRequest(task=args.task, method="none", samples=args.samples, steps=args.steps,
                                                                    seed=args.seed, batch_size=args.batch_size, sampler=args.sampler,
                                                                    sampler_params=settings))
    from negguide.datasets.mnist_judges import independent_judges

    records = runtime.records(xt, ())
    images = runtime.to_artifact(xt)
    report = {
        "task": args.task, "model": model_summary(resolved.task.details()),
        "samples": args.samples, "steps": args.steps, "seed": args.seed, "sampler": resolved.sampler.as_dict(), "sampling_s": round(sampling_s, 1),
        "device": str(runtime.device), "class_histogram": class_histogram(records["label"], 10).tolist(),
        "generated": figures(records, independent_judges().agree(images)), "real_held_out": real_digit_figures(runtime),
    }
    if args.inception:
        from negguide.datasets.mnist import load_mnist
        from negguide.metrics.fid import inception_fid

        real, _ = load_mnist()
        started = time.time()
        report["fid_inception_all"] = inception_fid(images, real[:, None])
        report["fid_inception_s"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "unguided_grid.png").write_bytes(image_grid_png(images, columns=16, limit=160))
    (args.out / "quality.json").write_text(json.dumps(report, indent=2))
    print(f"model: {report['model']['steps']} training steps, {report['model']['parameters']:,} parameters; "
          f"{args.samples} unguided samples x {args.steps} steps of {resolved.sampler.label()} in {sampling_s:.0f} s on {runtime.device}")
    for name, generated in report["generated"].items():
        real = report["real_held_out"][name]
        print(f"  {name:<16} {generated['value']:.4f} [{generated['low']:.4f}, {generated['high']:.4f}] (n={generated['n']})   "
              f"real held-out {real['value']:.4f} [{real['low']:.4f}, {real['high']:.4f}] (n={real['n']})   {verdict(name, generated['value'])}")
    if args.inception:
        print(f"  Inception FID to all 5,000 digits: {report['fid_inception_all']:.2f} ({report['fid_inception_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
