"""CIFAR-10 class removal through the real loading code, with tiny stand-ins saved by save_pretrained.

The real weights (google/ddpm-cifar10-32, the aaraki ViT, a fine-tuned to-forget DDPM) cannot be
downloaded here; tiny models of the same classes go through the same paths. The end-to-end run uses the
`ci` profile (forbidden_rate and kl_classes, no Inception FID). The preflight still wants the CIFAR-10
files for FID, so a tiny root in torchvision's layout stands in (its checksums cannot match the real ones).
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from negguide.datasets import train_cifar10
from negguide.bench.cli import main as bench_main
from negguide.bench.run.shards import clear_runtimes
from negguide.bench.tasks.spec import judge
from negguide.datasets import cifar10
from negguide.methods.errors import BenchError
from negguide.methods.schedule import Schedule
from negguide.metrics.frechet import FeatureStats

ENV_VARS = ("BENCH_CIFAR10_DDPM", "BENCH_CIFAR10_FORGET", "BENCH_CIFAR10_FORGET_0", "BENCH_CIFAR10_CLASSIFIER", "BENCH_CIFAR10_ROOT")
PERMUTATION = [3, 1, 0, 2, 4, 5, 6, 7, 9, 8]  # the classifier's output order differs from CIFAR-10's on purpose


def _tiny_unet(seed: int):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)


def _tiny_vit(directory: Path) -> None:
    """A one-layer ViT at 64x64 (so the judge really resizes 32 -> 64) with CIFAR-10 label names."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    id2label = {i: cifar10.CLASSES[PERMUTATION[i]] for i in range(10)}
    config = ViTConfig(image_size=64, patch_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       num_labels=10, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    ViTForImageClassification(config).save_pretrained(directory)
    ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(directory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tiny uncond / forget (class 0) DDPMs, a tiny ViT judge and a placeholder CIFAR-10 root, on disk."""
    from diffusers import DDPMPipeline, DDPMScheduler

    root = tmp_path_factory.mktemp("cifar10-tiny")
    paths = {"ddpm": root / "ddpm", "forget_root": root / "forget", "classifier": root / "vit", "data": root / "data"}
    _tiny_unet(0).save_pretrained(paths["ddpm"])
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    scheduler.save_pretrained(paths["ddpm"])
    # The forget model as a saved pipeline (unet/, scheduler/) with pickled .bin weights, like older Hub repos.
    DDPMPipeline(unet=_tiny_unet(1), scheduler=scheduler).save_pretrained(paths["forget_root"] / "class-0", safe_serialization=False)
    _tiny_vit(paths["classifier"])
    _fake_cifar(paths["data"] / cifar10.CIFAR_FOLDER)
    return paths


def _fake_cifar(folder: Path) -> None:
    """torchvision's CIFAR-10 layout with 4 images per batch file (its checksums will not match)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(cifar10.CIFAR_TRAIN_FILES):
        batch = {"data": rng.integers(0, 256, (4, 3 * 32 * 32), dtype=np.uint8), "labels": [(4 * i + j) % 10 for j in range(4)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(cifar10.CLASSES)}))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No CIFAR-10 variable leaks in, an empty Hub cache, no download, and no runtime cached from another test."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.chdir(tmp_path)  # the default forget and data roots are relative to the working folder
    clear_runtimes()
    yield
    clear_runtimes()


def _point_at(monkeypatch, tiny: dict[str, Path], **overrides: Path) -> None:
    paths = {**tiny, **overrides}
    monkeypatch.setenv("BENCH_CIFAR10_DDPM", str(paths["ddpm"]))
    monkeypatch.setenv("BENCH_CIFAR10_FORGET", str(paths["forget_root"]))
    monkeypatch.setenv("BENCH_CIFAR10_CLASSIFIER", str(paths["classifier"]))
    monkeypatch.setenv("BENCH_CIFAR10_ROOT", str(paths["data"]))


def _run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = bench_main(["run", "--method", "dng", *args, "--no-progress", "--no-baseline"])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_whole_path_with_tiny_models(tiny, monkeypatch, capsys, tmp_path):
    _point_at(monkeypatch, tiny)
    params = ["--param", "prior=0.01", "--param", "tau=0.2", "--param", "delta=2e-4", "--param", "p_max=0.8"]
    code, out, err = _run(capsys, "--task", "cifar10-remove-0", "--profile", "ci", "--samples", "8", "--steps", "3",
                          *params, "--db", str(tmp_path / "store" / "bench.duckdb"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result["metrics"]) == {"forbidden_rate", "kl_classes"}
    assert result["metric_samples"] == {"forbidden_rate": 8, "kl_classes": 8}
    assert 0.0 <= result["metrics"]["forbidden_rate"] <= 1.0 and np.isfinite(result["metrics"]["kl_classes"])
    saved = np.load(Path(result["artifacts_dir"]) / "samples.npz")["x"]
    assert saved.dtype == np.uint8 and saved.shape == (8, 3, 32, 32)
    traces = np.load(Path(result["artifacts_dir"]) / "traces.npz")
    assert traces["posterior"].shape == (3, 8)


def test_judge_maps_labels_by_name(tiny):
    judge = cifar10.load_classifier(cifar10.ModelSource("classifier", str(tiny["classifier"]), True, "X", "fix"), torch.device("cpu"))
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    pixels = judge.processor(images=list(images), return_tensors="pt", input_data_format="channels_first")["pixel_values"]
    assert pixels.shape == (5, 3, 64, 64)
    raw = judge.model(pixel_values=pixels).logits.argmax(1).numpy()
    assert judge.labels(images).tolist() == [PERMUTATION[i] for i in raw]
    assert cifar10.cifar_order({i: name.upper() for i, name in enumerate(cifar10.CLASSES)}) == list(range(10))
    with pytest.raises(ValueError, match="not the 10 CIFAR-10 classes"):
        cifar10.cifar_order({**{i: n for i, n in enumerate(cifar10.CLASSES)}, 0: "plane"})


@pytest.mark.parametrize("offline, reason", [("1", "HF_HUB_OFFLINE is set"), (None, "hub.invalid cannot be reached")])
def test_missing_weights_offline_name_the_model(monkeypatch, capsys, offline, reason):
    if offline is None:  # no flag, but the Hub's host does not resolve (.invalid never does): fail at once, no retries
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    code, _, err = _run(capsys, "--task", "cifar10-remove-0")
    line = _one_error_line(err)
    assert code == 2 and reason in line
    assert "google/ddpm-cifar10-32" in line and "hf download" in line and "BENCH_CIFAR10_DDPM" in line
    assert "also missing: to-forget DDPM for class 0, classifier, CIFAR-10 data" in line


def _corrupt(tiny: dict[str, Path], tmp_path: Path, how: str) -> Path:
    broken = tmp_path / f"ddpm-{how}"
    shutil.copytree(tiny["ddpm"], broken)
    if how == "weights":
        (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file" * 4)
    elif how == "json":
        (broken / "config.json").write_text("{not json")
    elif how == "size":
        config = json.loads((broken / "config.json").read_text())
        (broken / "config.json").write_text(json.dumps({**config, "sample_size": 64}))
    elif how == "schedule":
        config = json.loads((broken / "scheduler_config.json").read_text())
        (broken / "scheduler_config.json").write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    elif how == "no-weights":
        (broken / "diffusion_pytorch_model.safetensors").unlink()
    return broken


@pytest.mark.parametrize("how, expected", [("weights", "cannot load the unconditional DDPM"), ("json", "not valid JSON"),
                                           ("size", "sample_size 64"), ("schedule", "prediction_type='v_prediction'"),
                                           ("no-weights", "has no diffusion_pytorch_model.safetensors or diffusion_pytorch_model.bin")])
def test_corrupt_model_folder_is_one_line(tiny, monkeypatch, capsys, tmp_path, how, expected):
    _point_at(monkeypatch, tiny, ddpm=_corrupt(tiny, tmp_path, how))
    code, _, err = _run(capsys, "--task", "cifar10-remove-0", "--profile", "ci", "--db", str(tmp_path / "bench.duckdb"))
    line = _one_error_line(err)
    assert code == 2 and expected in line and "BENCH_CIFAR10_DDPM" in line


def test_unknown_task_suggests_a_name(capsys):
    code, _, err = _run(capsys, "--task", "cifar10-remove-12")
    line = _one_error_line(err)
    assert code == 2 and "unknown task 'cifar10-remove-12'" in line and "did you mean 'cifar10-remove-" in line


def test_describe_gives_the_paper_hyperparameters(capsys):
    assert bench_main(["describe", "task", "cifar10-remove-3", "--json"]) == 0
    task = json.loads(capsys.readouterr().out)
    assert task["removed_class"] == "cat" and task["shape"] == [3, 32, 32]
    assert task["dng_paper_params"] == {"prior": 0.01, "tau": 0.2, "delta": 2e-4, "p_max": 0.8}
    assert task["protocols"]["paper"]["samples"] == 10_240 and task["protocols"]["paper"]["steps"] == 1000
    assert task["protocols"]["paper"]["sampler"] == {"name": "ddpm", "settings": {"variance": "beta"}}
    assert task["protocols"]["quick"]["sampler"] == {"name": "ddpm", "settings": {"variance": "beta_tilde"}}
    assert set(task["protocols"]["quick"]["metrics"]) == {"forbidden_rate", "kl_classes", "fid", "fid_all"}


def test_finetune_saves_a_loadable_forget_model(tiny, monkeypatch, tmp_path, capsys):
    rng = np.random.default_rng(0)
    fake = (rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8), np.arange(20) % 10)
    monkeypatch.setattr(train_cifar10, "load_cifar10_train", lambda root: fake)
    out = tmp_path / "forget" / "class-0"
    code = train_cifar10.main(["cifar10-forget", "--class", "0", "--out", str(out), "--base", str(tiny["ddpm"]), "--data-root", str(tmp_path),
                         "--steps", "2", "--batch-size", "4", "--device", "cpu", "--log-every", "1"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "finetune.json").read_text())
    assert record["train_images"] == 2 and record["class"] == "airplane" and [row["step"] for row in record["log"]] == [1, 2]
    source = cifar10.ModelSource("forget", str(out), True, "X", "fix")
    tuned, base = cifar10.load_unet(source), cifar10.load_unet(cifar10.ModelSource("base", str(tiny["ddpm"]), True, "X", "fix"))
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), base.state_dict().values()))
    assert cifar10.scheduler_problem(json.loads((out / "scheduler_config.json").read_text()), Schedule()) is None
    assert train_cifar10.main(["cifar10-forget", "--class", "0", "--out", str(out), "--base", str(tiny["ddpm"]), "--steps", "1"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert train_cifar10.main(["cifar10-forget", "--out", str(out)]) == 2
    assert _one_error_line(capsys.readouterr().err).endswith("(see `bench train cifar10-forget --help`)")
    with pytest.raises(BenchError, match="must be in 0..9"):
        train_cifar10.finetune_forget_model(tiny["ddpm"], tmp_path, 10, tmp_path / "x", steps=1)


def test_cifar_data_through_torchvision(tiny, monkeypatch):
    load = cifar10.load_cifar10_train.__wrapped__  # no lru_cache across the two calls
    with pytest.raises(BenchError, match="cannot be read"):  # torchvision checks the real files' checksums
        load(tiny["data"])
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    images, labels = load(tiny["data"])
    first = pickle.loads((tiny["data"] / cifar10.CIFAR_FOLDER / "data_batch_1").read_bytes())
    assert images.shape == (20, 3, 32, 32) and images.dtype == np.uint8 and labels.tolist() == [i % 10 for i in range(20)]
    assert np.array_equal(images[0], first["data"][0].reshape(3, 32, 32))
    with pytest.raises(BenchError, match="has no CIFAR-10 training files; set BENCH_CIFAR10_ROOT"):
        cifar10.check_data(tiny["data"] / "elsewhere")


def test_fid_references_drop_the_removed_class(tiny, monkeypatch):
    import negguide.metrics.fid
    from negguide.bench.tasks.cifar10 import Cifar10Runtime

    _point_at(monkeypatch, tiny)
    monkeypatch.setenv("BENCH_CIFAR10_FORGET_3", str(tiny["forget_root"] / "class-0"))  # the per-class variable wins
    labels = np.arange(30) % 10
    monkeypatch.setattr(cifar10, "load_cifar10_train", lambda root: (np.zeros((30, 3, 32, 32), np.uint8), labels))
    calls = []
    rng = np.random.default_rng(0)

    def fake_features(generated: np.ndarray) -> np.ndarray:
        calls.append(("generated", generated.dtype, generated.shape))
        return rng.normal(size=(len(generated), 4))

    def fake_reference(reference: np.ndarray) -> FeatureStats:
        calls.append(("reference", reference.dtype, len(reference)))
        return FeatureStats.of(rng.normal(size=(len(reference), 4)))

    monkeypatch.setattr(negguide.metrics.fid, "inception_features", fake_features)
    monkeypatch.setattr(negguide.metrics.fid, "reference_stats", fake_reference)
    runtime = Cifar10Runtime(removed=3, device=torch.device("cpu"))
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    judgement = judge(runtime, x, {}, ("forbidden_rate", "kl_classes", "fid", "fid_all"))
    values = {v.name: v for v in judgement.metrics}
    assert judgement.records["label"].shape == (6,) and np.all(judgement.records["confidence"] <= 1.0)
    assert set(values) == {"forbidden_rate", "kl_classes", "fid", "fid_all"} and all(v.samples == 6 for v in values.values())
    assert all(v.low <= v.value <= v.high for v in values.values())
    # Inception once on the 6 saved images; fid: the reference without the 3 cats; fid_all: all 30.
    assert calls == [("generated", np.uint8, (6, 3, 32, 32)), ("reference", np.uint8, 27), ("reference", np.uint8, 30)]

