"""Stable Diffusion 2 for the text-to-image tasks: locate, load, encode prompts, denoise, decode.

The model is a Hugging Face id (default `stabilityai/stable-diffusion-2-base`, 512 px,
eps-prediction) found in the local Hugging Face cache, or a folder laid out like the repository
(unet/, vae/, text_encoder/, tokenizer/, scheduler/), named by BENCH_SD_MODEL. Nothing is ever
downloaded here. v-prediction models (SD 2 at 768 px) are converted to eps with the schedule's
alpha_bar; x0-prediction models are refused.

The `nag` prediction (methods/nag.py) is the positive prompt's eps with Normalized Attention Guidance in
every cross-attention layer (attn2) against the row's negative prompt: for each UNet forward that holds
such rows, NAG processors replace attn2's and the original processors are restored when it returns.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from negguide.methods.errors import BenchError, MethodError
from negguide.methods.nag import PREDICTION as NAG_PREDICTION
from negguide.methods.nag import NAGParams, normalized_attention
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
    def eps(self, x: torch.Tensor, step: Step, context: torch.Tensor, nag: NAGRows | None = None) -> torch.Tensor:
        """Noise predictions for latents x [N, C, H, W] with text context [N, 77, D], in chunks; `nag`: rows
        computed with NAG in the cross-attention layers."""
        out = []
        for start in range(0, len(x), MAX_BATCH):
            chunk = x[start:start + MAX_BATCH].to(self.device, self.dtype)
            t = torch.full((len(chunk),), step.t, dtype=torch.long, device=self.device)
            with nag_processors(self.unet, nag.within(start, start + len(chunk)) if nag is not None else None):
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


# ---- Normalized Attention Guidance in the cross-attention layers ------------------------------

@dataclass(frozen=True)
class NAGRows:
    """Rows of a UNet batch computed with NAG: their indices and their negative prompts' contexts [n, 77, D]."""

    scale: float
    tau: float
    alpha: float
    rows: torch.Tensor  # long, ascending
    negative: torch.Tensor

    def within(self, start: int, stop: int) -> NAGRows | None:
        """These rows of the chunk [start, stop), indexed from the chunk's start; None if there are none."""
        keep = (self.rows >= start) & (self.rows < stop)
        if not bool(keep.any()):
            return None
        return NAGRows(self.scale, self.tau, self.alpha, self.rows[keep] - start, self.negative[keep])


def _attend(attn: torch.nn.Module, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V with the heads merged, [B, tokens, inner], as diffusers' AttnProcessor2_0."""
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    key, value = attn.to_k(context), attn.to_v(context)
    batch, head_dim = len(query), key.shape[-1] // attn.heads
    q, k, v = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    z = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
    return z.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)


class NAGCrossAttention:
    """A diffusers attention processor for a cross-attention layer: plain attention on every row, and on the
    NAG rows a second pass against the negative context, combined by methods/nag.py's formula."""

    def __init__(self, nag: NAGRows):
        self.nag = nag

    def __call__(self, attn: torch.nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        plain = (attn.spatial_norm is None and attn.group_norm is None and not attn.residual_connection and hidden_states.ndim == 3)
        if encoder_hidden_states is None or attention_mask is not None or not plain:
            raise BenchError("NAG's processor handles unmasked cross-attention on token sequences (Stable Diffusion's attn2) only")
        query = attn.to_q(hidden_states)
        z = _attend(attn, query, encoder_hidden_states)
        rows = self.nag.rows.to(z.device)
        z_neg = _attend(attn, query[rows], self.nag.negative.to(z.device, encoder_hidden_states.dtype))
        # In float32: in half precision an L1 norm over a thousand channels can overflow.
        guided = normalized_attention(z[rows].float(), z_neg.float(), self.nag.scale, self.nag.tau, self.nag.alpha)
        z = z.index_copy(0, rows, guided.to(z.dtype))
        return attn.to_out[1](attn.to_out[0](z)) / attn.rescale_output_factor


@contextlib.contextmanager
def nag_processors(unet: torch.nn.Module, nag: NAGRows | None) -> Iterator[None]:
    """NAG processors on the UNet's cross-attention layers (attn2) while the block runs, then the original ones."""
    if nag is None:
        yield
        return
    original = unet.attn_processors
    unet.set_attn_processor({name: NAGCrossAttention(nag) if name.endswith("attn2.processor") else processor
                             for name, processor in original.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(original)


class SDDenoiser:
    """The Denoiser protocol over Stable Diffusion: every requested prediction in one batched forward.

    `select(x, step, names)` tells, for each name, which row of `contexts` conditions each sample
    (the runtime knows each sample's prompt and arm); the inputs are repeated once per name. The rows
    of a `nag` prediction take their negative context from the rows `select` gives `neg`.
    """

    def __init__(self, model: StableDiffusion, contexts: torch.Tensor,
                 select: Callable[[torch.Tensor, Step, tuple[str, ...]], dict[str, np.ndarray]]):
        self.model, self.contexts, self.select = model, contexts, select
        self.attention: NAGParams | None = None  # set by the nag method's prepare_models for its draw

    def guide_attention(self, params: NAGParams | None) -> None:
        self.attention = params

    def __call__(self, x: torch.Tensor, step: Step, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        rows = self.select(x, step, names)
        index = torch.as_tensor(np.concatenate([rows[n] for n in names]), device=self.contexts.device)
        nag = self._nag_rows(x, step, names.index(NAG_PREDICTION) * len(x)) if NAG_PREDICTION in names else None
        eps = self.model.eps(x.repeat(len(names), *([1] * (x.dim() - 1))), step, self.contexts[index], nag)
        return dict(zip(names, eps.split(len(x))))

    def _nag_rows(self, x: torch.Tensor, step: Step, first: int) -> NAGRows:
        """The `nag` block of the batch (rows first .. first + len(x)), with the parameters the nag method prepared."""
        params = self.attention
        if params is None:
            raise MethodError(f"the {NAG_PREDICTION!r} prediction needs a method that prepares attention guidance "
                              "(subclass NormalizedAttentionGuidance)")
        negative = torch.as_tensor(self.select(x, step, ("neg",))["neg"], device=self.contexts.device)
        return NAGRows(params.scale, params.tau, params.alpha, torch.arange(first, first + len(x)), self.contexts[negative])
