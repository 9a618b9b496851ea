"""Real-size check of the download-only paths (heavy: `python -m pytest -m heavy tests/test_real_size.py -s`).

The models the CIFAR-10 and text-to-image tasks download from the Hugging Face Hub are rebuilt here from
their configs, written out below (nothing is downloaded), with random weights:

- google/ddpm-cifar10-32 (diffusers UNet2DModel, ~35.7M parameters), saved twice as the unconditional and
  the to-forget DDPM, and the judge aaraki/vit-base-patch16-224-in21k-finetuned-cifar10 (ViT-B/16 at 224,
  10 CIFAR-10 labels, ~85.8M parameters); `bench run` draws 4 samples x 2 steps of cifar10-remove-0
  through the CLI, exactly as it would with the downloaded weights;
- Stable Diffusion 2 (stabilityai/stable-diffusion-2, 768-v, v-prediction): the full-size
  UNet2DConditionModel (~866M parameters, fp32 on CPU) in a diffusers-layout folder, with small stand-in
  text encoder (hidden size 1024, as OpenCLIP ViT-H's) and VAE (latent 4, factor 8); the project's
  `stable_diffusion.load` reads it and one denoising step runs as one batched forward of 3 rows
  (null, positive, negative prompt) at latent 4 x 96 x 96 through `SDDenoiser`.

Each test prints parameter counts, shapes, peak RSS (resource.getrusage) and wall time.
"""
from __future__ import annotations

import contextlib
import gc
import gzip
import io
import json
import resource
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from negguide.bench.cli import main as bench_main

pytestmark = pytest.mark.heavy

# ---- the real configs (as on the Hub) --------------------------------------------------------------

DDPM_CIFAR10_CONFIG = {  # google/ddpm-cifar10-32 config.json
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "center_input_sample": False, "time_embedding_type": "positional",
    "freq_shift": 1, "flip_sin_to_cos": False, "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), "block_out_channels": (128, 256, 256, 256),
    "layers_per_block": 2, "mid_block_scale_factor": 1, "downsample_padding": 0, "act_fn": "silu", "attention_head_dim": None,
    "norm_num_groups": 32, "norm_eps": 1e-6,
}
DDPM_CIFAR10_SCHEDULER = {  # google/ddpm-cifar10-32 scheduler_config.json
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "clip_sample": True,
    "variance_type": "fixed_large",
}
VIT_CIFAR10_CONFIG = {  # aaraki/vit-base-patch16-224-in21k-finetuned-cifar10 config.json (ViT-B/16 at 224)
    "image_size": 224, "patch_size": 16, "num_channels": 3, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "qkv_bias": True,
}
VIT_CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SD2_UNET_CONFIG = {  # stabilityai/stable-diffusion-2 unet/config.json (768-v)
    "sample_size": 96, "in_channels": 4, "out_channels": 4, "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "downsample_padding": 1, "mid_block_scale_factor": 1,
    "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True, "dual_cross_attention": False,
}
SD2_SCHEDULER = {  # stabilityai/stable-diffusion-2 scheduler/scheduler_config.json
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
    "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "v_prediction",
}
SD2_TEXT_HIDDEN = 1024  # OpenCLIP ViT-H/14 text tower (23 layers there; 1 in the stand-in)

DNG_PARAMS = ("--param", "prior=0.01", "--param", "tau=0.2", "--param", "delta=2e-4", "--param", "p_max=0.8")


# ---- measuring ---------------------------------------------------------------------------------------

def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _rss_mib() -> float:
    """Resident memory now (Linux /proc), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    """Peak resident memory of this process (resource.getrusage, KiB on Linux), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    """Reset the peak (Linux >= 4.0: write 5 to /proc/self/clear_refs) so each test reports its own."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Report:
    """Stages with wall time, RSS now and the peak so far; printed at the end of a test (pytest -s)."""

    def __init__(self, title: str):
        self.title, self.reset = title, _reset_peak()
        self.start = time.perf_counter()
        self.lines = [(f"peak RSS {'reset at test start' if self.reset else 'is the process peak (reset unavailable)'}: "
                       f"{_peak_mib():.0f} MiB, RSS {_rss_mib():.0f} MiB")]

    @contextlib.contextmanager
    def stage(self, name: str):
        began = time.perf_counter()
        yield
        self.lines.append(f"{name:<44} {time.perf_counter() - began:8.2f} s   RSS {_rss_mib():7.0f} MiB   peak {_peak_mib():7.0f} MiB")

    def note(self, text: str) -> None:
        self.lines.append(text)

    def print(self) -> None:
        total = time.perf_counter() - self.start
        print(f"\n==== {self.title} ====", *(f"  {line}" for line in self.lines),
              f"  total wall time {total:.1f} s, peak RSS {_peak_mib():.0f} MiB (resource.getrusage ru_maxrss)", sep="\n", flush=True)


def _clear_runtime_cache() -> None:
    """Drop runtimes the run engine keeps per process (the engine is being refactored: whichever cache exists)."""
    import importlib

    for module_name, attribute in (("negguide.bench.run.shards", "clear_runtimes"), ("negguide.bench.run.engine", "_cached_runtime")):
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError):
            continue
        (target.cache_clear if hasattr(target, "cache_clear") else target)()
    gc.collect()


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No CIFAR-10 / SD variable leaks in, an empty Hub cache, no download, no cached runtime."""
    for name in ("BENCH_CIFAR10_DDPM", "BENCH_CIFAR10_FORGET", "BENCH_CIFAR10_FORGET_0", "BENCH_CIFAR10_CLASSIFIER",
                 "BENCH_CIFAR10_ROOT", "BENCH_SD_MODEL", "BENCH_DB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.chdir(tmp_path)
    _clear_runtime_cache()
    yield
    _clear_runtime_cache()


# ---- CIFAR-10: google/ddpm-cifar10-32 x 2 and the ViT-B/16 judge --------------------------------------

def _ddpm_cifar10(seed: int):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**DDPM_CIFAR10_CONFIG)


def _save_ddpm(model, scheduler, folder: Path, as_pipeline: bool) -> None:
    """As the Hub repo (config.json + scheduler_config.json at the top) or as a saved DDPMPipeline (unet/, scheduler/)."""
    from diffusers import DDPMPipeline

    if as_pipeline:
        DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(folder)
    else:
        model.save_pretrained(folder)
        scheduler.save_pretrained(folder)


def _vit_cifar10(folder: Path) -> int:
    """The judge's architecture and image processor, random weights; returns its parameter count."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(2)
    id2label = dict(enumerate(VIT_CIFAR10_LABELS))
    config = ViTConfig(**VIT_CIFAR10_CONFIG, num_labels=10, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model = ViTForImageClassification(config)
    model.save_pretrained(folder)
    ViTImageProcessor(do_resize=True, size={"height": 224, "width": 224}, resample=2, do_rescale=True, do_normalize=True,
                      image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return _params(model)


def test_cifar10_real_size_through_the_cli(monkeypatch, tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel
    from transformers import ViTForImageClassification

    report = Report("CIFAR-10 real size: google/ddpm-cifar10-32 (uncond + to-forget) and ViT-B/16 judge, 4 samples x 2 steps")
    paths = {"ddpm": tmp_path / "ddpm-cifar10-32", "forget": tmp_path / "forget", "vit": tmp_path / "vit-cifar10"}
    with report.stage("build + save the two DDPMs and the ViT"):
        scheduler = DDPMScheduler(**DDPM_CIFAR10_SCHEDULER)
        uncond = _ddpm_cifar10(0)
        ddpm_params = _params(uncond)
        _save_ddpm(uncond, scheduler, paths["ddpm"], as_pipeline=False)
        _save_ddpm(_ddpm_cifar10(1), scheduler, paths["forget"] / "class-0", as_pipeline=True)
        del uncond
        vit_params = _vit_cifar10(paths["vit"])
        gc.collect()
    report.note(f"DDPM UNet2DModel params: {ddpm_params:,} ({ddpm_params / 1e6:.2f}M) each, x2 networks")
    report.note(f"ViTForImageClassification params: {vit_params:,} ({vit_params / 1e6:.2f}M)")
    assert 35.0e6 < ddpm_params < 36.5e6  # google/ddpm-cifar10-32: 35.7M
    assert 85.0e6 < vit_params < 86.5e6  # ViT-B/16 with a 10-way head: 85.8M

    monkeypatch.setenv("BENCH_CIFAR10_DDPM", str(paths["ddpm"]))
    monkeypatch.setenv("BENCH_CIFAR10_FORGET", str(paths["forget"]))
    monkeypatch.setenv("BENCH_CIFAR10_CLASSIFIER", str(paths["vit"]))
    monkeypatch.setenv("BENCH_CIFAR10_ROOT", str(tmp_path / "no-cifar-data"))  # the ci profile needs no FID data

    # Record what the real networks see: every UNet forward's input and output, every judge forward's pixels.
    calls: dict[str, list] = {"unet": [], "vit": []}
    unet_forward, vit_forward = UNet2DModel.forward, ViTForImageClassification.forward

    def counted_unet(self, sample, timestep, *args, **kwargs):
        out = unet_forward(self, sample, timestep, *args, **kwargs)
        result = out.sample if hasattr(out, "sample") else out[0]
        calls["unet"].append((tuple(sample.shape), tuple(result.shape), bool(torch.isfinite(result).all())))
        return out

    def counted_vit(self, pixel_values=None, *args, **kwargs):
        out = vit_forward(self, pixel_values, *args, **kwargs)
        calls["vit"].append((tuple(pixel_values.shape), tuple(out.logits.shape), bool(torch.isfinite(out.logits).all())))
        return out

    monkeypatch.setattr(UNet2DModel, "forward", counted_unet)
    monkeypatch.setattr(ViTForImageClassification, "forward", counted_vit)

    out, err = io.StringIO(), io.StringIO()
    with report.stage("bench run cifar10-remove-0 (load + sample + judge)"), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = bench_main(["run", "--method", "dng", "--task", "cifar10-remove-0", "--profile", "ci", "--samples", "4", "--steps", "2",
                           *DNG_PARAMS, "--db", str(tmp_path / "store" / "bench.duckdb"), "--device", "cpu", "--json", "--no-progress"])
    assert code == 0, err.getvalue()
    result = json.loads(out.getvalue())
    saved = np.load(Path(result["artifacts_dir"]) / "samples.npz")["x"]
    traces = np.load(Path(result["artifacts_dir"]) / "traces.npz")

    report.note(f"UNet forwards (input -> output, finite): {calls['unet']}")
    report.note(f"ViT forwards (pixel_values -> logits, finite): {calls['vit']}")
    report.note(f"samples.npz x: {saved.shape} {saved.dtype}; traces: {({k: traces[k].shape for k in traces.files})}")
    report.note(f"metrics: {result['metrics']}  metric_samples: {result['metric_samples']}")
    timing = {k: v for k, v in result.items() if "second" in k or "time" in k}
    if timing:
        report.note(f"run record timings: {timing}")
    report.print()

    assert len(calls["unet"]) == 4 and all(c == ((4, 3, 32, 32), (4, 3, 32, 32), True) for c in calls["unet"])  # 2 steps x 2 networks
    assert calls["vit"] and all(c[0][1:] == (3, 224, 224) and c[1][1:] == (10,) and c[2] for c in calls["vit"])
    assert sum(c[0][0] for c in calls["vit"]) == 4
    assert saved.shape == (4, 3, 32, 32) and saved.dtype == np.uint8
    assert result["metric_samples"] == {"forbidden_rate": 4, "kl_classes": 4}
    assert all(np.isfinite(v) for v in result["metrics"].values())
    assert all(np.isfinite(traces[k]).all() for k in traces.files if np.issubdtype(traces[k].dtype, np.floating))


# ---- Stable Diffusion 2 (768-v): the full-size UNet, one step -----------------------------------------

def _write_clip_tokenizer(folder: Path):
    """SD 2's tokenizer vocabulary (CLIP BPE, as open_clip ships it) as a transformers CLIPTokenizer."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(default_bpe()) as bpe:
        merges = [tuple(line.split()) for line in bpe.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
    units = list(bytes_to_unicode().values())
    vocab = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77, pad_token="!")


def _build_sd2_folder(root: Path, report: Report) -> tuple[Path, int]:
    """unet/ (full size, random), text_encoder/ + vae/ (small stand-ins of matching dims), tokenizer/, scheduler/."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = root / "sd2-768-v"
    with report.stage("build the full-size SD 2 UNet (random, fp32)"):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**SD2_UNET_CONFIG)
        unet_params = _params(unet)
    with report.stage("save unet/ (safetensors)"):
        unet.save_pretrained(folder / "unet")
        del unet
        gc.collect()
    size = sum(f.stat().st_size for f in (folder / "unet").iterdir())
    report.note(f"unet/ on disk: {size / 2**30:.2f} GiB")
    with report.stage("build + save stand-in tokenizer, text encoder, VAE"):
        _write_clip_tokenizer(root / "bpe").save_pretrained(folder / "tokenizer")
        torch.manual_seed(1)
        CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=SD2_TEXT_HIDDEN, intermediate_size=4096, num_hidden_layers=1,
                                     num_attention_heads=16, max_position_embeddings=77, projection_dim=512, hidden_act="gelu",
                                     pad_token_id=1, bos_token_id=0, eos_token_id=2)).save_pretrained(folder / "text_encoder")
        AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=768,
                      scaling_factor=0.18215).save_pretrained(folder / "vae")
        DDIMScheduler(**SD2_SCHEDULER).save_pretrained(folder / "scheduler")
    return folder, unet_params


def test_sd2_full_unet_one_step(tmp_path):
    from negguide.datasets import stable_diffusion
    from negguide.datasets.stable_diffusion import SDDenoiser, read_facts

    report = Report("Stable Diffusion 2 (768-v) real-size UNet: one denoising step, 3 rows at latent 4x96x96, fp32 CPU")
    folder, unet_params = _build_sd2_folder(tmp_path, report)
    report.note(f"UNet2DConditionModel params: {unet_params:,} ({unet_params / 1e6:.1f}M)")
    assert 860e6 < unet_params < 870e6  # SD 2's UNet: 865.9M

    facts = read_facts(str(folder))
    report.note(f"facts: latent {facts.latent_shape}, {facts.prediction_type}, schedule {facts.schedule.as_dict()}")
    assert facts.found and facts.latent_shape == (4, 96, 96) and facts.prediction_type == "v_prediction"
    assert facts.schedule.as_dict()["kind"] == "scaled_linear"

    with report.stage("stable_diffusion.load (from_pretrained, cpu)"):
        model = stable_diffusion.load(str(folder), "cpu")
    assert model.dtype == torch.float32 and model.device.type == "cpu" and _params(model.unet) == unet_params
    report.note(f"loaded: unet {_params(model.unet) / 1e6:.1f}M, text encoder (stand-in) {_params(model.text_encoder) / 1e6:.1f}M, "
                f"VAE (stand-in) {_params(model.vae) / 1e6:.3f}M")

    prompts = ["", "a medieval feast in the great hall of a stone castle, long wooden tables, painting", "candles"]
    with report.stage("encode 3 prompts (null, positive, negative)"):
        contexts = model.encode(prompts)
    assert contexts.shape == (3, 77, 1024) and torch.isfinite(contexts).all()

    rows = {"null": np.array([0]), "uncond": np.array([1]), "neg": np.array([2])}
    denoiser = SDDenoiser(model, contexts, lambda x, step, names: {n: rows[n] for n in names})
    step = facts.schedule.steps(50)[0]  # the first step of a 50-step chain (t = 999 or so)
    x = torch.randn(1, *facts.latent_shape, generator=torch.Generator().manual_seed(0))

    forwards = []
    forward = model.unet.forward

    def counted(sample, timestep, *args, **kwargs):
        out = forward(sample, timestep, *args, **kwargs)
        forwards.append((tuple(sample.shape), tuple(kwargs["encoder_hidden_states"].shape), tuple(out.sample.shape)))
        return out

    model.unet.forward = counted
    with report.stage("one step: SDDenoiser, one batched UNet forward"):
        preds = denoiser(x, step, ("null", "uncond", "neg"))
    report.note(f"UNet forwards (latents, encoder_hidden_states, output): {forwards}  at t={step.t}")
    report.note(f"eps shapes: { {k: tuple(v.shape) for k, v in preds.items()} }, "
                f"std {[round(float(v.std()), 4) for v in preds.values()]}")

    with report.stage("decode 1 latent with the stand-in VAE"):
        images = model.decode(x)
    report.note(f"decoded image: {images.shape} {images.dtype}")
    report.print()

    assert forwards == [((3, 4, 96, 96), (3, 77, 1024), (3, 4, 96, 96))]  # one forward of the 3 rows
    assert set(preds) == {"null", "uncond", "neg"}
    assert all(v.shape == (1, 4, 96, 96) and v.dtype == torch.float32 and torch.isfinite(v).all() for v in preds.values())
    assert not torch.equal(preds["uncond"], preds["neg"])  # different prompts, different predictions
    assert images.shape == (1, 3, 768, 768) and images.dtype == np.uint8
