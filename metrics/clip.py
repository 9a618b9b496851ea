"""CLIP score and Q (paper §4.2, Appendix H, Eq. 22 and 23) with open_clip, offline.

CLIP score here is the raw cosine of L2-normalised open_clip image embeddings (eval mode, the
model's own preprocessing), in [-1, 1]: not x100, not the 2.5 w-scaled variant.

Weights: BENCH_CLIP_MODEL (architecture, default ViT-B-32) with BENCH_CLIP_PRETRAINED (open_clip
tag, default laion2b_s34b_b79k) found in the local caches, or BENCH_CLIP_CHECKPOINT (a local
state-dict file for that architecture). Nothing is downloaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from negguide.methods.errors import BenchError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP judges: an architecture and a pretrained tag, or a local checkpoint."""

    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    checkpoint: str | None = None

    def label(self) -> str:
        return f"{self.model}:{self.checkpoint or self.pretrained}"


def clip_spec() -> ClipSpec:
    """The spec named by the environment (defaults otherwise)."""
    return ClipSpec(os.environ.get("BENCH_CLIP_MODEL", DEFAULT_MODEL), os.environ.get("BENCH_CLIP_PRETRAINED", DEFAULT_PRETRAINED),
                    os.environ.get("BENCH_CLIP_CHECKPOINT") or None)


def _missing(spec: ClipSpec) -> str:
    fetch = f"python -c \"import open_clip; open_clip.create_model_and_transforms('{spec.model}', pretrained='{spec.pretrained}')\""
    return (f"CLIP weights {spec.model}/{spec.pretrained} are not on this machine and nothing is downloaded here: run `{fetch}` "
            f"on a machine with network and copy the Hugging Face cache, or set BENCH_CLIP_CHECKPOINT=/path/to/open_clip_model.bin "
            f"(with BENCH_CLIP_MODEL=<architecture>)")


def weights_path(spec: ClipSpec) -> str:
    """A local file holding the weights; BenchError (one line) when there is none."""
    import open_clip

    if spec.checkpoint:
        if not Path(spec.checkpoint).is_file():
            raise BenchError(f"BENCH_CLIP_CHECKPOINT={spec.checkpoint} is not a file; unset it or point it at an open_clip state dict for {spec.model}")
        return spec.checkpoint
    if spec.model not in open_clip.list_models():
        raise BenchError(f"unknown open_clip architecture {spec.model!r}; `python -c \"import open_clip; print(open_clip.list_models())\"` lists them")
    config = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
    if not config:
        raise BenchError(f"open_clip has no pretrained tag {spec.pretrained!r} for {spec.model}; see open_clip.list_pretrained_tags_by_model")
    found = _cached(config)
    if found is None:
        raise BenchError(_missing(spec))
    return found


def _cached(config: dict) -> str | None:
    """The cached file for an open_clip pretrained config (HF hub or URL cache), without network."""
    if config.get("file"):
        return config["file"] if Path(config["file"]).is_file() else None
    hub = config.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        for name in ([filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str):
                return hit
    url = config.get("url", "")
    if url:
        target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        return str(target) if target.is_file() else None
    return None


def _tag_settings(spec: ClipSpec) -> dict:
    """The pretrained tag's preprocessing and activation, which open_clip skips when given a file path."""
    import open_clip

    if spec.checkpoint:
        return {}
    config = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
    keys = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation", "resize_mode": "image_resize_mode"}
    settings = {arg: config[key] for key, arg in keys.items() if key in config}
    if config.get("quick_gelu"):
        settings["force_quick_gelu"] = True
    return settings


class ClipJudge:
    """An open_clip model in eval mode with its own preprocessing and tokenizer."""

    def __init__(self, spec: ClipSpec, device: str | None = None):
        import open_clip

        path = weights_path(spec)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            model, _, self.preprocess = open_clip.create_model_and_transforms(spec.model, pretrained=path, device=self.device, **_tag_settings(spec))
        except (RuntimeError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BenchError(f"could not load CLIP {spec.label()}: {first}") from None
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(spec.model)
        self.spec = spec

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    @torch.no_grad()
    def image_embeddings(self, images: np.ndarray, batch: int = 32) -> torch.Tensor:
        """L2-normalised embeddings [N, D] of uint8 images [N, 3, H, W]."""
        from PIL import Image

        out = []
        for start in range(0, len(images), batch):
            pixels = torch.stack([self.preprocess(Image.fromarray(np.ascontiguousarray(im.transpose(1, 2, 0)))) for im in images[start:start + batch]])
            out.append(torch.nn.functional.normalize(self.model.encode_image(pixels.to(self.device)).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 1)

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings [N, D]."""
        tokens = self.tokenizer(texts).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()


@lru_cache(maxsize=2)
def load_clip(spec: ClipSpec | None = None) -> ClipJudge:
    """The judge for `spec` (the environment's by default), loaded once per process."""
    return ClipJudge(spec or clip_spec())


def clip_score(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise cosine of two batches of L2-normalised embeddings (raw cosine, in [-1, 1])."""
    return (a * b).sum(-1).double().numpy()


def q_metric(unrelated: np.ndarray, related: np.ndarray) -> float:
    """Paper Eq. 22: mean CS(unguided, unrelated) - mean CS(unguided, related); higher is better."""
    return float(np.mean(unrelated) - np.mean(related))


def q_regression(related_scores: list[float] | np.ndarray, unrelated_scores: list[float] | np.ndarray) -> float:
    """Paper Eq. 23 over a guidance sweep: fit unrelated = a related + b, Q = (a - 1) x_mid + b.

    Each sweep point contributes its mean CLIP scores (x: related, y: unrelated); x_mid is the
    middle of the related range. With one point this is Eq. 22.
    """
    x, y = np.asarray(related_scores, dtype=np.float64), np.asarray(unrelated_scores, dtype=np.float64)
    if x.shape != y.shape or x.size == 0:
        raise ValueError("q_regression needs as many related as unrelated scores, at least one")
    middle = (x.min() + x.max()) / 2.0
    if x.size == 1 or np.ptp(x) == 0.0:
        return float(np.mean(y) - np.mean(x))
    a, b = np.polyfit(x, y, 1)
    return float((a - 1.0) * middle + b)


def zero_shot(images: torch.Tensor, concept: torch.Tensor, neutral: torch.Tensor, logit_scale: float) -> np.ndarray:
    """Probability that each image shows its concept rather than its neutral text (2-way softmax, CLIP's scale)."""
    logits = logit_scale * torch.stack([(images * concept).sum(-1), (images * neutral).sum(-1)], dim=-1)
    return torch.softmax(logits, dim=-1)[:, 0].double().numpy()
