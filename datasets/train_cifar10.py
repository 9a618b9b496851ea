"""Fine-tune the CIFAR-10 to-forget DDPM: a copy of the unconditional model trained on the removed
class only (paper §4.1). `bench train cifar10-forget --class K [--out DIR]`.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from negguide.datasets.train_mnist import ema_update
from negguide.datasets.cifar10 import (
    CIFAR_FOLDER,
    CLASSES,
    DDPM_ID,
    DEFAULT_DATA_ROOT,
    ENV_DDPM,
    ENV_ROOT,
    ModelSource,
    data_root,
    ddpm_source,
    forget_dir,
    load_cifar10_train,
    load_unet,
    to_model_range,
)
from negguide.methods.errors import BenchError, OneLineParser
from negguide.methods.schedule import Schedule

# ---- fine-tuning the to-forget model --------------------------------------------------------

@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of the to-forget fine-tune (our choices; the paper does not give them)."""

    steps: int = 10_000
    batch_size: int = 128
    lr: float = 5e-5
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 100


def finetune_forget_model(base_unet_dir: str | Path, data_root: str | Path, removed: int, out: str | Path, steps: int,
                          config: FinetuneConfig | None = None, device: str | None = None, schedule: Schedule = Schedule(),
                          overwrite: bool = False) -> Path:
    """Fine-tune a copy of the unconditional DDPM on the removed class only and save its EMA with save_pretrained.

    `base_unet_dir` is a folder or a Hub id. Standard eps-prediction loss (Ho et al. 2020) with random
    horizontal flips. The output folder gets config.json, the weights, scheduler_config.json and finetune.json.
    """
    from diffusers import DDPMScheduler

    config = replace(config or FinetuneConfig(), steps=steps)
    if not 0 <= removed < len(CLASSES):
        raise BenchError(f"--class must be in 0..{len(CLASSES) - 1}, got {removed}")
    if config.steps < 1 or config.batch_size < 1:
        raise BenchError(f"--steps and --batch-size must be positive, got {config.steps} and {config.batch_size}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BenchError(f"{out} exists and is not empty; pass --overwrite or choose another --out")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    images, labels = load_cifar10_train(Path(data_root))
    data = to_model_range(images[labels == removed]).to(device)
    base = str(base_unet_dir)
    source = ModelSource("base DDPM", base, Path(base).is_dir(), ENV_DDPM, f"pass --base with a diffusers UNet2DModel folder or {DDPM_ID}")
    model = load_unet(source, schedule).to(device)
    ema = copy.deepcopy(model)
    model.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    alpha_bars = torch.tensor(schedule.alpha_bars(), dtype=torch.float32, device=device)
    log, started = [], time.time()
    for step in range(1, config.steps + 1):
        loss = _denoising_loss(model, data, alpha_bars, config.batch_size, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        ema_update(ema, model, config.ema_decay)
        if step % config.log_every == 0 or step == config.steps:
            value = loss.item()
            log.append({"step": step, "loss": value, "elapsed_s": round(time.time() - started, 2)})
            print(f"step {step}/{config.steps} loss {value:.4f} ({time.time() - started:.0f} s)", file=sys.stderr)
    # Write to a sibling folder first, so a crash never leaves a half-written model where the task looks.
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ema.save_pretrained(tmp)
    DDPMScheduler(num_train_timesteps=schedule.T, beta_start=schedule.beta_start, beta_end=schedule.beta_end,
                  beta_schedule="linear", prediction_type="epsilon").save_pretrained(tmp)
    record = {"base": base, "removed": removed, "class": CLASSES[removed], "train_images": len(data), "device": str(device),
              "config": vars(config), "schedule": schedule.as_dict(), "log": log}
    (tmp / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _denoising_loss(model: torch.nn.Module, data: torch.Tensor, alpha_bars: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """||eps - eps_theta(sqrt(abar) x0 + sqrt(1 - abar) eps, t)||^2 on a random batch with random flips."""
    device = data.device
    x0 = data[torch.randint(len(data), (batch_size,), device=device, generator=generator)]
    flip = torch.rand(batch_size, device=device, generator=generator) < 0.5
    x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    t = torch.randint(len(alpha_bars), (batch_size,), device=device, generator=generator)
    eps = torch.randn(x0.shape, device=device, generator=generator)
    abar = alpha_bars[t][:, None, None, None]
    x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps
    return torch.nn.functional.mse_loss(model(x_t, t).sample, eps)


# ---- command line -------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bench train", description="CIFAR-10 class-removal models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p = sub.add_parser("cifar10-forget", help="fine-tune the unconditional DDPM on one class (the to-forget model)")
    p.add_argument("--class", dest="removed", type=int, required=True, metavar="K", help="CIFAR-10 class index 0..9 (0 = airplane)")
    p.add_argument("--out", type=Path, help="output folder (default: where the task looks, see BENCH_CIFAR10_FORGET)")
    p.add_argument("--base", help=f"unconditional DDPM folder or Hub id (default: ${ENV_DDPM} or {DDPM_ID})")
    p.add_argument("--data-root", type=Path, help=f"folder holding {CIFAR_FOLDER} (default: ${ENV_ROOT} or {DEFAULT_DATA_ROOT})")
    defaults = FinetuneConfig()
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--ema-decay", type=float, default=defaults.ema_decay)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--log-every", type=int, default=defaults.log_every)
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`bench train cifar10-forget --class K --out DIR`; errors as one line, exit code 2."""
    try:
        args = build_parser().parse_args(argv)
        if not 0 <= args.removed < len(CLASSES):
            raise BenchError(f"--class must be in 0..{len(CLASSES) - 1}, got {args.removed}")
        config = FinetuneConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                                seed=args.seed, log_every=args.log_every)
        out = finetune_forget_model(args.base or ddpm_source().location, args.data_root or data_root(), args.removed,
                                    args.out or forget_dir(args.removed), args.steps, config, args.device, overwrite=args.overwrite)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved the to-forget model for class {args.removed} ({CLASSES[args.removed]}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
