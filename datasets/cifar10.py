"""CIFAR-10 class removal (paper §4.1, Appendix D.2): the models and data, from the Hub cache or local folders.

- unconditional DDPM: `google/ddpm-cifar10-32` (Ho et al. 2020), or a local diffusers folder in
  `BENCH_CIFAR10_DDPM`;
- to-forget DDPM (trained on the removed class only): a local diffusers folder, `BENCH_CIFAR10_FORGET_<K>`,
  else `$BENCH_CIFAR10_FORGET/class-<K>` (default root `bench-data/cifar10-forget`); make one with
  `python -m negguide.datasets.cifar10 finetune --class K --out DIR`;
- judge: `aaraki/vit-base-patch16-224-in21k-finetuned-cifar10`, or a local folder in `BENCH_CIFAR10_CLASSIFIER`;
- data (FID references, fine-tuning): torchvision's CIFAR-10 under `BENCH_CIFAR10_ROOT` (default `bench-data/cifar10`).

Hub models load with `local_files_only` when the Hub is off limits (`HF_HUB_OFFLINE`) or its host does not
resolve, so a machine without network fails at once with a one-line `BenchError` saying what to provide.
Heavy libraries (diffusers, transformers, torchvision) are imported inside the functions that need them.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from negguide.methods.errors import BenchError
from negguide.methods.schedule import Schedule

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DDPM_ID = "google/ddpm-cifar10-32"
CLASSIFIER_ID = "aaraki/vit-base-patch16-224-in21k-finetuned-cifar10"
ENV_DDPM = "BENCH_CIFAR10_DDPM"
ENV_FORGET = "BENCH_CIFAR10_FORGET"
ENV_CLASSIFIER = "BENCH_CIFAR10_CLASSIFIER"
ENV_ROOT = "BENCH_CIFAR10_ROOT"
DEFAULT_FORGET_ROOT = Path("bench-data") / "cifar10-forget"
DEFAULT_DATA_ROOT = Path("bench-data") / "cifar10"
CIFAR_FOLDER = "cifar-10-batches-py"  # what torchvision.datasets.CIFAR10 reads under its root
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
UNET_FILES = (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"))
CLASSIFIER_FILES = (("config.json",), ("preprocessor_config.json",),
                    ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json"))
# What from_pretrained raises on a missing, offline or corrupt model: OSError (covers huggingface_hub's HTTP
# and cache errors), ValueError (bad JSON, invalid repo id), RuntimeError (state-dict shape mismatch).
LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError)


def _load_errors() -> tuple[type[BaseException], ...]:
    """LOAD_ERRORS plus safetensors' own error type (raised on a truncated weights file)."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # older safetensors: the error lives in the compiled module only
        return LOAD_ERRORS
    return (*LOAD_ERRORS, SafetensorError)


def _first_line(exc: BaseException, limit: int = 240) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---- where things are ---------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSource:
    """A model to load: a local folder or a Hugging Face Hub id, with the fix to print when it is missing."""

    what: str  # e.g. "unconditional DDPM"
    location: str  # a folder (local) or a Hub id
    local: bool
    env: str  # the variable that points at a local folder
    fix: str  # how to provide it, one clause

    def where(self) -> str:
        return f"{self.location} ({self.env})" if self.local else self.location


def ddpm_source() -> ModelSource:
    """The unconditional DDPM: `BENCH_CIFAR10_DDPM` if set, else google/ddpm-cifar10-32."""
    path = os.environ.get(ENV_DDPM)
    fix = f"set {ENV_DDPM} to a diffusers UNet2DModel folder (save_pretrained), or unset it to use {DDPM_ID}"
    return ModelSource("unconditional DDPM", path or DDPM_ID, bool(path), ENV_DDPM, fix)


def forget_dir(removed: int) -> Path:
    """The to-forget DDPM's folder: BENCH_CIFAR10_FORGET_<K>, else <BENCH_CIFAR10_FORGET>/class-<K>."""
    direct = os.environ.get(f"{ENV_FORGET}_{removed}")
    if direct:
        return Path(direct)
    return Path(os.environ.get(ENV_FORGET) or DEFAULT_FORGET_ROOT) / f"class-{removed}"


def forget_source(removed: int) -> ModelSource:
    directory = forget_dir(removed)
    env = f"{ENV_FORGET}_{removed}" if os.environ.get(f"{ENV_FORGET}_{removed}") else ENV_FORGET
    fix = (f"fine-tune one with `python -m negguide.datasets.cifar10 finetune --class {removed} --out {directory}` (GPU advised), "
           f"or set {ENV_FORGET}_{removed}=/path/to/dir or {ENV_FORGET}=/dir/holding/class-{removed}")
    return ModelSource(f"to-forget DDPM for class {removed} ({CLASSES[removed]})", str(directory), True, env, fix)


def classifier_source() -> ModelSource:
    """The judge: `BENCH_CIFAR10_CLASSIFIER` if set, else the aaraki ViT from the paper."""
    path = os.environ.get(ENV_CLASSIFIER)
    fix = f"set {ENV_CLASSIFIER} to a transformers image-classification folder (model and image processor), or unset it to use {CLASSIFIER_ID}"
    return ModelSource("CIFAR-10 classifier", path or CLASSIFIER_ID, bool(path), ENV_CLASSIFIER, fix)


def data_root() -> Path:
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_DATA_ROOT)


# ---- the Hub, without surprises -----------------------------------------------------------

def hub_cache_dir() -> Path:
    """The Hub cache, read from the environment now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


@lru_cache(maxsize=4)
def _host_resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def hub_offline_reason() -> str | None:
    """Why the Hub must not be asked (None: downloads allowed).

    An unresolvable host counts as offline: otherwise huggingface_hub retries for minutes before failing.
    """
    flag = os.environ.get("HF_HUB_OFFLINE")
    if flag is not None and flag.strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    host = urlparse(endpoint).hostname or endpoint
    return None if _host_resolves(host) else f"{host} cannot be reached"


def _cached(repo_id: str, filename: str) -> Path | None:
    """The cached file of a Hub repo, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hub_cache_dir()))
    return Path(found) if isinstance(found, str) else None


def _locate(source: ModelSource, filename: str) -> Path | None:
    """A file of the source, locally or in the Hub cache (never downloads)."""
    if source.local:
        path = Path(source.location) / filename
        return path if path.is_file() else None
    return _cached(source.location, filename)


def check_files(source: ModelSource, groups: tuple[tuple[str, ...], ...], subfolder: str = "") -> None:
    """Raise a one-line BenchError if a required file (one of each group's alternatives) is missing."""
    if source.local and not Path(source.location).is_dir():
        raise BenchError(f"{source.what}: {source.where()} is not a folder; {source.fix}")
    prefix = f"{subfolder}/" if subfolder else ""
    offline = None if source.local else hub_offline_reason()
    if not source.local and offline is None:
        return  # from_pretrained may download what is not cached
    for group in groups:
        if not any(_locate(source, prefix + name) for name in group):
            if source.local:
                raise BenchError(f"{source.what}: {source.where()} has no {' or '.join(prefix + n for n in group)}; {source.fix}")
            raise BenchError(f"model {source.location} is not in the Hugging Face cache ({hub_cache_dir()}) and {offline}; "
                             f"download it on a connected machine with `hf download {source.location}` (then copy the cache) "
                             f"or set {source.env}=/path/to/dir")


def _read_json(source: ModelSource, filename: str) -> dict | None:
    """A JSON file of the source if it is at hand (local or cached), else None; invalid JSON is a BenchError."""
    path = _locate(source, filename)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{source.what}: {path} is not valid JSON ({_first_line(exc)}); {source.fix}") from None
    if not isinstance(data, dict):
        raise BenchError(f"{source.what}: {path} is not a JSON object; {source.fix}")
    return data


# ---- the DDPMs ----------------------------------------------------------------------------

def unet_subfolder(source: ModelSource) -> str:
    """'unet' for a saved DDPMPipeline (model_index.json + unet/), '' for a bare UNet2DModel folder."""
    return "unet" if _locate(source, "config.json") is None and _locate(source, "unet/config.json") else ""


def unet_problem(config: dict) -> str | None:
    """Why a UNet config does not fit the task (32x32 RGB, unconditional, eps only), or None."""
    kind = config.get("_class_name", "UNet2DModel")
    if kind != "UNet2DModel":
        return f"is a {kind}, not a UNet2DModel"
    size = config.get("sample_size")
    if size not in (32, [32, 32], (32, 32)):
        return f"has sample_size {size}, expected 32"
    if config.get("in_channels") != 3 or config.get("out_channels") != 3:
        # a learned-variance model would output 6 channels: eps and the variance interpolation
        return f"maps {config.get('in_channels')} to {config.get('out_channels')} channels, expected 3 to 3 (eps prediction)"
    if config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None:
        return "is class-conditional, expected an unconditional network"
    return None


def scheduler_problem(config: dict, schedule: Schedule) -> str | None:
    """Why a DDPMScheduler config differs from the task's schedule, or None."""
    expected = {"num_train_timesteps": schedule.T, "beta_schedule": "linear", "prediction_type": "epsilon"}
    found = {"num_train_timesteps": config.get("num_train_timesteps", 1000), "beta_schedule": config.get("beta_schedule", "linear"),
             "prediction_type": config.get("prediction_type", "epsilon")}  # diffusers' defaults when a key is absent
    for key, value in expected.items():
        if found[key] != value:
            return f"has {key}={found[key]!r}, the task samples with {value!r}"
    betas = (float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02)))
    if not np.allclose(betas, (schedule.beta_start, schedule.beta_end), rtol=1e-6, atol=0):
        return f"has betas {betas[0]}..{betas[1]}, the task samples with {schedule.beta_start}..{schedule.beta_end}"
    if config.get("trained_betas") is not None:
        return "has trained_betas, the task samples with a linear schedule"
    return None


def _scheduler_config(source: ModelSource) -> dict | None:
    """scheduler_config.json beside the UNet (or in scheduler/), when at hand."""
    for name in ("scheduler_config.json", "scheduler/scheduler_config.json"):
        config = _read_json(source, name)
        if config is not None:
            return config
    return None


def _check_configs(source: ModelSource, subfolder: str, schedule: Schedule) -> None:
    """The UNet and scheduler configs at hand (local or cached) fit the task."""
    config = _read_json(source, f"{subfolder}/config.json" if subfolder else "config.json")
    problem = config and unet_problem(config)
    if problem:
        raise BenchError(f"{source.what} at {source.where()}: its config.json {problem}; {source.fix}")
    scheduler = _scheduler_config(source)
    problem = scheduler and scheduler_problem(scheduler, schedule)
    if problem:
        raise BenchError(f"{source.what} at {source.where()}: its scheduler config {problem}; {source.fix}")


def check_unet(source: ModelSource, schedule: Schedule = Schedule()) -> None:
    """Preflight: the files are there and the configs fit, without loading any weights."""
    subfolder = unet_subfolder(source)
    check_files(source, UNET_FILES, subfolder)
    _check_configs(source, subfolder, schedule)


def load_unet(source: ModelSource, schedule: Schedule = Schedule()) -> torch.nn.Module:
    """A diffusers UNet2DModel in eval mode, checked against the task (one-line BenchError otherwise)."""
    from diffusers import UNet2DModel

    check_unet(source, schedule)
    subfolder = unet_subfolder(source)
    offline = source.local or hub_offline_reason() is not None
    try:
        model = UNet2DModel.from_pretrained(source.location, subfolder=subfolder or None, local_files_only=offline,
                                            cache_dir=str(hub_cache_dir()), low_cpu_mem_usage=False)
    except _load_errors() as exc:
        raise BenchError(f"cannot load the {source.what} from {source.where()}: {_first_line(exc)}; {source.fix}") from None
    if not offline:  # the configs were just downloaded (the scheduler's by us: from_pretrained fetches the UNet only)
        _download_quietly(source.location, "scheduler_config.json")
        _check_configs(source, subfolder, schedule)
    return model.eval().requires_grad_(False)


def _download_quietly(repo_id: str, filename: str) -> None:
    """Fetch one small file into the Hub cache; a repo without it is fine."""
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(repo_id, filename, cache_dir=str(hub_cache_dir()))
    except (OSError, ValueError):
        pass


# ---- the judge ----------------------------------------------------------------------------

def cifar_order(id2label: dict) -> list[int]:
    """For each classifier output index, its CIFAR-10 class index (matched by label name)."""
    names = {int(k): str(v).strip().lower().replace("_", " ") for k, v in id2label.items()}
    if sorted(names) != list(range(len(CLASSES))) or sorted(names.values()) != sorted(CLASSES):
        raise ValueError(f"its labels {sorted(names.values())} are not the 10 CIFAR-10 classes {list(CLASSES)}")
    return [CLASSES.index(names[i]) for i in range(len(CLASSES))]


def check_classifier(source: ModelSource) -> None:
    """Preflight: the files are there and the labels are CIFAR-10's, without loading any weights."""
    check_files(source, CLASSIFIER_FILES)
    config = _read_json(source, "config.json")
    if config is not None:
        try:
            cifar_order(config.get("id2label") or {})
        except ValueError as exc:
            raise BenchError(f"{source.what} at {source.where()}: {exc}; {source.fix}") from None


class CifarJudge:
    """The evaluation classifier: uint8 images N x 3 x 32 x 32 -> CIFAR-10 class indices."""

    def __init__(self, model: torch.nn.Module, processor: Any, order: list[int], device: torch.device, batch_size: int = 128):
        self.model, self.processor, self.device, self.batch_size = model.to(device), processor, device, batch_size
        self.order = torch.tensor(order, dtype=torch.long)

    @torch.no_grad()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities [N, 10] in CIFAR-10's class order, the images resized and normalised as
        the image processor says (32 -> 224 for the ViT)."""
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = list(images[start:start + self.batch_size])
            pixels = self.processor(images=batch, return_tensors="pt", input_data_format="channels_first")["pixel_values"]
            probs = torch.softmax(self.model(pixel_values=pixels.to(self.device)).logits.float(), dim=1).cpu()
            ordered = torch.zeros(len(probs), len(CLASSES))
            ordered[:, self.order] = probs
            out.append(ordered)
        return torch.cat(out).numpy() if out else np.zeros((0, len(CLASSES)), dtype=np.float32)

    def labels(self, images: np.ndarray) -> np.ndarray:
        """Argmax class of each image."""
        return self.probabilities(images).argmax(1)


def load_classifier(source: ModelSource, device: torch.device) -> CifarJudge:
    """The judge from the Hub cache or a local folder (one-line BenchError otherwise)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    check_classifier(source)
    options = {"local_files_only": source.local or hub_offline_reason() is not None, "cache_dir": str(hub_cache_dir())}
    try:
        model = AutoModelForImageClassification.from_pretrained(source.location, **options)
        processor = AutoImageProcessor.from_pretrained(source.location, **options)
        order = cifar_order(model.config.id2label)
    except _load_errors() as exc:
        raise BenchError(f"cannot load the {source.what} from {source.where()}: {_first_line(exc)}; {source.fix}") from None
    return CifarJudge(model.eval().requires_grad_(False), processor, order, device)


# ---- data ---------------------------------------------------------------------------------

def check_data(root: Path | None = None) -> None:
    """Preflight: torchvision's CIFAR-10 training files are under the root (their checksums are checked on load)."""
    root = root or data_root()
    missing = [name for name in CIFAR_TRAIN_FILES if not (root / CIFAR_FOLDER / name).is_file()]
    if missing:
        lacking = "no CIFAR-10 training files" if len(missing) == len(CIFAR_TRAIN_FILES) else f"no {', '.join(missing)}"
        raise BenchError(f"CIFAR-10 data not found: {root / CIFAR_FOLDER} has {lacking}; set {ENV_ROOT} to the folder holding {CIFAR_FOLDER} "
                         f"(on a connected machine: `python -c \"import torchvision; torchvision.datasets.CIFAR10('DIR', download=True)\"`)")


@lru_cache(maxsize=1)
def load_cifar10_train(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 50,000 training images as uint8 N x 3 x 32 x 32 and their int64 labels (torchvision, no download)."""
    from torchvision.datasets import CIFAR10

    check_data(root)
    try:
        data = CIFAR10(str(root), train=True, download=False)
    except (RuntimeError, OSError, ValueError) as exc:  # torchvision: "Dataset not found or corrupted"
        raise BenchError(f"CIFAR-10 under {root} ({ENV_ROOT}) cannot be read: {_first_line(exc)}") from None
    images = np.ascontiguousarray(np.asarray(data.data, dtype=np.uint8).transpose(0, 3, 1, 2))
    labels = np.asarray(data.targets, dtype=np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 N x 3 x 32 x 32 -> float32 in [-1, 1]."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32)) / 127.5 - 1.0
