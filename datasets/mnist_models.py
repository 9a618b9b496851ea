"""The MNIST model bundle: a class-conditional DDPM UNet (with a null label) and a small CNN classifier.

Both are trained on this machine's CPU by `datasets/train_mnist.py` and shipped under `datasets/weights/`.
The DDPM network takes labels 0..9 for class-conditional and `NULL_LABEL` (10) for unconditional
noise predictions, so one network serves both (classifier-free-guidance style training).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NULL_LABEL = 10
DDPM_WEIGHTS = "ema.safetensors"
CLASSIFIER_WEIGHTS = "model.pt"
CONFIG_FILE = "config.json"
DDPM_TRAIN_CMD = "python -m negguide.datasets.train_mnist ddpm --out {dir}"
CLASSIFIER_TRAIN_CMD = "python -m negguide.datasets.train_mnist classifier --out {dir}"


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass `cls` from a dict, ignoring unknown keys and turning lists into tuples."""
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if k in known:
            kwargs[k] = tuple(v) if isinstance(v, list) and "tuple" in str(known[k].type) else v
    return cls(**kwargs)


@dataclass
class DDPMConfig:
    """Architecture, diffusion and training settings of the MNIST DDPM (JSON-serialisable)."""

    # architecture (diffusers UNet2DModel)
    sample_size: int = 28
    in_channels: int = 1
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    attention_head_dim: int = 32
    norm_num_groups: int = 8
    num_class_embeds: int = 11  # 10 digits + NULL_LABEL
    null_label: int = NULL_LABEL
    prediction_type: str = "epsilon"
    # diffusion
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    # training
    seed: int = 0
    batch_size: int = 128
    lr: float = 1e-3
    min_lr_factor: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    p_uncond: float = 0.2
    ema_decay: float = 0.999
    save_every: int = 250
    log_every: int = 50
    max_steps: int | None = None
    max_minutes: float | None = None
    init_from: str | None = None  # a shipped model folder whose EMA weights start this run
    init_steps: int = 0  # training steps that model had already taken
    # filled in during training
    steps_done: int = 0
    param_count: int = 0
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DDPMConfig":
        """Inverse of `to_dict` (unknown keys ignored)."""
        return _from_dict(cls, data)


def build_unet(config: DDPMConfig) -> "UNet2DModel":  # noqa: F821
    """A randomly initialised class-conditional eps-prediction UNet2DModel for `config`."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=config.sample_size,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        block_out_channels=tuple(config.block_out_channels),
        down_block_types=tuple(config.down_block_types),
        up_block_types=tuple(config.up_block_types),
        layers_per_block=config.layers_per_block,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
        num_class_embeds=config.num_class_embeds,
    )


@dataclass
class ClassifierConfig:
    """Architecture, training settings and held-out results of the MNIST classifier."""

    channels: tuple[int, ...] = (32, 64)
    feature_dim: int = 128
    dropout: float = 0.3
    seed: int = 0
    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift_px: float = 2.0
    max_rotate_deg: float = 10.0
    # filled in after training
    test_accuracy: float | None = None
    per_class_accuracy: list[float] = field(default_factory=list)
    n_train: int = 0
    n_test: int = 0
    param_count: int = 0
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClassifierConfig":
        """Inverse of `to_dict` (unknown keys ignored)."""
        return _from_dict(cls, data)


class MnistClassifier(nn.Module):
    """Small CNN: [N,1,28,28] in [-1,1] -> logits [N,10]; `features` gives penultimate [N, feature_dim]."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        c1, c2 = self.config.channels

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.conv = nn.Sequential(block(1, c1), block(c1, c2))  # 28 -> 14 -> 7
        self.fc = nn.Linear(c2 * 7 * 7, self.config.feature_dim)
        self.dropout = nn.Dropout(self.config.dropout)
        self.head = nn.Linear(self.config.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [N, feature_dim] (after ReLU, before dropout)."""
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [N, 10]."""
        return self.head(self.dropout(self.features(x)))


def _read_config(path: Path, regen: str) -> dict[str, Any]:
    """Read a config.json, raising one-line FileNotFoundError/ValueError that name the fix."""
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}; regenerate it with: {regen}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"corrupt {path} ({type(exc).__name__}); regenerate it with: {regen}") from None
    if not isinstance(data, dict):
        raise ValueError(f"corrupt {path} (not a JSON object); regenerate it with: {regen}")
    return data


def _one_line(exc: BaseException) -> str:
    """First line of an exception message, shortened."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def load_ddpm(directory: str | Path) -> tuple["UNet2DModel", DDPMConfig]:  # noqa: F821
    """Load the shipped EMA DDPM weights and config from `directory` (eval mode, fp32)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    regen = DDPM_TRAIN_CMD.format(dir=d)
    try:
        config = DDPMConfig.from_dict(_read_config(d / CONFIG_FILE, regen))
        model = build_unet(config)
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("corrupt"):
            raise
        raise ValueError(f"corrupt {d / CONFIG_FILE} ({_one_line(exc)}); regenerate it with: {regen}") from None
    weights = d / DDPM_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"missing {weights}; regenerate it with: {regen}")
    try:
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"corrupt {weights} ({_one_line(exc)}); regenerate it with: {regen}") from None
    return model.eval().float(), config


def load_classifier(directory: str | Path) -> tuple[MnistClassifier, ClassifierConfig]:
    """Load the shipped MNIST classifier and its config from `directory` (eval mode)."""
    import pickle
    import zipfile

    d = Path(directory)
    regen = CLASSIFIER_TRAIN_CMD.format(dir=d)
    try:
        config = ClassifierConfig.from_dict(_read_config(d / CONFIG_FILE, regen))
        model = MnistClassifier(config)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"corrupt {d / CONFIG_FILE} ({_one_line(exc)}); regenerate it with: {regen}") from None
    weights = d / CLASSIFIER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"missing {weights}; regenerate it with: {regen}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError("not a state dict")
        model.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise ValueError(f"corrupt {weights} ({_one_line(exc)}); regenerate it with: {regen}") from None
    return model.eval(), config
