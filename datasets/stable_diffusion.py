"""Stable Diffusion 2 for the text-to-image tasks: locate, load, encode prompts, denoise, decode.

The model is a Hugging Face id (default `stabilityai/stable-diffusion-2-base`, 512 px,
eps-prediction) found in the local Hugging Face cache, or a folder laid out like the repository
(unet/, vae/, text_encoder/, tokenizer/, scheduler/), named by BENCH_SD_MODEL. Nothing is ever
downloaded here. v-prediction models (SD 2 at 768 px) are converted to eps with the schedule's
alpha_bar; x0-prediction models are refused.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from negguide.methods.errors import BenchError
from negguide.methods.schedule import Schedule, Step

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-base"
ENV_MODEL = "BENCH_SD_MODEL"
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PREDICTION_TYPES = ("epsilon", "v_prediction")
MAX_BATCH = int(os.environ.get("BENCH_SD_MAX_BATCH", "48"))  # UNet rows per forward (GPU memory)


def model_spec() -> str:
    """The model id or folder the text-to-image tasks use."""
    return os.environ.get(ENV_MODEL, DEFAULT_MODEL)


def _hf_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _is_repo_id(spec: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", spec) is not None and not Path(spec).exists()


def missing_message(spec: str) -> str:
    """One line: what is missing and the ways to provide it."""
    folders = " ".join(s + "/" for s in SUBFOLDERS)
    if _is_repo_id(spec):
        return (f"Stable Diffusion weights {spec} are not in the Hugging Face cache ({_hf_cache()}) and nothing is downloaded here: "
                f"run `huggingface-cli download {spec}` on a machine with network and copy the cache, "
                f"or set {ENV_MODEL}=/path/to/a/folder with {folders}")
    return (f"{ENV_MODEL}={spec} is not a folder with {folders}: save a model there "
            f"(`huggingface-cli download {DEFAULT_MODEL} --local-dir {spec}`) or unset {ENV_MODEL} to use the Hugging Face cache")


def locate(spec: str) -> Path:
    """The folder holding the model's subfolders; BenchError (one line) when it is not on this machine."""
    path = Path(spec).expanduser()
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(spec, local_files_only=True))
        except Exception:  # not cached, or not a valid repo id: both mean "not here"
            raise BenchError(missing_message(spec)) from None
    absent = [s for s in SUBFOLDERS if not (path / s).is_dir()]
    if absent:
        raise BenchError(f"{path} lacks {', '.join(a + '/' for a in absent)}; " + missing_message(spec))
    return path


# ---- schedule ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScaledLinearSchedule(Schedule):
    """Stable Diffusion's `scaled_linear` betas: linspace(sqrt(start), sqrt(end), T) ** 2."""

    T: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012

    def alpha_bars(self) -> np.ndarray:
        betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, self.T, dtype=np.float64) ** 2
        return np.cumprod(1.0 - betas)

    def as_dict(self) -> dict:
        return {**super().as_dict(), "kind": "scaled_linear"}


def schedule_from_config(config: dict) -> Schedule:
    """Our DDPM schedule equal to a diffusers scheduler config's training betas."""
    kind = config.get("beta_schedule", "linear")
    T = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    if config.get("trained_betas"):
        raise BenchError("scheduler config has trained_betas; only linear and scaled_linear schedules are supported")
    if kind == "scaled_linear":
        return ScaledLinearSchedule(T, start, end)
    if kind == "linear":
        return Schedule(T, start, end)
    raise BenchError(f"scheduler beta_schedule {kind!r} is not supported (linear, scaled_linear)")


@dataclass(frozen=True)
class ModelFacts:
    """What the task must know before loading weights: latent shape, schedule, prediction type."""

    latent_shape: tuple[int, int, int] = (4, 64, 64)
    schedule: Schedule = field(default_factory=ScaledLinearSchedule)
    prediction_type: str = "epsilon"
    found: bool = False  # False: SD 2 base defaults, the weights are not on this machine

    def as_dict(self) -> dict:
        return {"latent_shape": list(self.latent_shape), "schedule": self.schedule.as_dict(), "prediction_type": self.prediction_type,
                "weights_found": self.found}


def read_facts(spec: str) -> ModelFacts:
    """Facts from the model's config files when present, else Stable Diffusion 2 base's (cheap: JSON only)."""
    try:
        path = locate(spec)
    except BenchError:
        return ModelFacts()
    unet = json.loads((path / "unet" / "config.json").read_text())
    scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    size = unet.get("sample_size", 64)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return ModelFacts((int(unet.get("in_channels", 4)), int(height), int(width)), schedule_from_config(scheduler),
                      scheduler.get("prediction_type", "epsilon"), True)


# ---- model ---------------------------------------------------------------------------------

@dataclass
class StableDiffusion:
    """The loaded components, on one device."""

    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    facts: ModelFacts
    device: torch.device
    dtype: torch.dtype

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Text-encoder hidden states [n, 77, D] as the pipeline feeds them to the UNet."""
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device) if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        return self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0].to(self.dtype)

    @torch.no_grad()
    def eps(self, x: torch.Tensor, step: Step, context: torch.Tensor) -> torch.Tensor:
        """Noise predictions for latents x [N, C, H, W] with text context [N, 77, D], in chunks."""
        out = []
        for start in range(0, len(x), MAX_BATCH):
            chunk = x[start:start + MAX_BATCH].to(self.device, self.dtype)
            t = torch.full((len(chunk),), step.t, dtype=torch.long, device=self.device)
            pred = self.unet(chunk, t, encoder_hidden_states=context[start:start + MAX_BATCH]).sample
            if self.facts.prediction_type == "v_prediction":  # v = sqrt(abar) eps - sqrt(1 - abar) x0
                pred = step.alpha_bar**0.5 * pred + (1.0 - step.alpha_bar) ** 0.5 * chunk
            out.append(pred.to(x.device, x.dtype))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch: int = 8) -> np.ndarray:
        """uint8 images [N, 3, H, W] from latents."""
        scaling = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        images = []
        for start in range(0, len(latents), batch):
            z = latents[start:start + batch].to(self.device, self.dtype) / scaling
            image = self.vae.decode(z).sample.float().clamp(-1.0, 1.0)
            images.append(((image + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy())
        return np.concatenate(images) if images else np.zeros((0, 3, 1, 1), np.uint8)


def load(spec: str | None = None, device: str | None = None) -> StableDiffusion:
    """Tokenizer, text encoder, UNet and VAE from a local folder or the HF cache (never the network)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    spec = spec or model_spec()
    path = locate(spec)
    facts = read_facts(str(path))
    if facts.prediction_type not in PREDICTION_TYPES:
        raise BenchError(f"{spec}: prediction_type {facts.prediction_type!r} is not supported ({', '.join(PREDICTION_TYPES)})")
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if target.type == "cuda" else torch.float32
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True, torch_dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True, torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError) as exc:  # a partial download or a wrong folder
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"could not load Stable Diffusion from {path}: {first}") from None
    for module in (text_encoder, unet, vae):
        module.to(target).eval().requires_grad_(False)
    return StableDiffusion(tokenizer, text_encoder, unet, vae, facts, target, dtype)


class SDDenoiser:
    """The Denoiser protocol over Stable Diffusion: every requested prediction in one batched forward.

    `select(x, step, names)` tells, for each name, which row of `contexts` conditions each sample
    (the runtime knows each sample's prompt and arm); the inputs are repeated once per name.
    """

    def __init__(self, model: StableDiffusion, contexts: torch.Tensor,
                 select: Callable[[torch.Tensor, Step, tuple[str, ...]], dict[str, np.ndarray]]):
        self.model, self.contexts, self.select = model, contexts, select

    def __call__(self, x: torch.Tensor, step: Step, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        rows = self.select(x, step, names)
        index = torch.as_tensor(np.concatenate([rows[n] for n in names]), device=self.contexts.device)
        eps = self.model.eps(x.repeat(len(names), *([1] * (x.dim() - 1))), step, self.contexts[index])
        return dict(zip(names, eps.split(len(x))))
