"""The latent MNIST model: shapes, files, a few training steps, and resume (all fast, tiny settings)."""
from __future__ import annotations

import csv

import pytest
import torch

from negguide.datasets.mnist_latent import (
    NULL_LABEL,
    Autoencoder,
    AutoencoderConfig,
    DenoiserConfig,
    LatentDenoiser,
    autoencoder_loss,
    denoiser_loss,
    load_autoencoder,
    load_denoiser,
    sample_latents,
    save_autoencoder,
    save_denoiser,
)
from negguide.datasets.train_mnist_latent import TRAIN_STATE, TRAINING_LOG, main, train_autoencoder, train_denoiser

SMALL = {"width": 32, "depth": 2, "emb_dim": 16}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _digits(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    from negguide.datasets.mnist import load_mnist, to_model_range

    images, labels = load_mnist()
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:n].numpy()
    return to_model_range(images[pick]), torch.as_tensor(labels[pick])


def test_autoencoder_shapes_and_range():
    ae = Autoencoder(AutoencoderConfig(channels=(8, 16))).eval()
    x, _ = _digits(5)
    z = ae.encode(x)
    assert z.shape == (5, 4, 7, 7) and ae.latent_shape == (4, 7, 7)
    out = ae.decode(z)
    assert out.shape == (5, 1, 28, 28) and out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize("arch", ["mlp", "conv", "unet"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_denoiser_shapes_and_eps(arch, prediction):
    model = LatentDenoiser(DenoiserConfig(arch=arch, prediction=prediction, **SMALL)).eval()
    z = torch.randn(6, 4, 7, 7)
    y = torch.tensor([0, 1, 2, NULL_LABEL, NULL_LABEL, 9])
    assert model(z, torch.full((6,), 10), y).shape == z.shape
    eps = model.eps(z, 999, y)
    assert eps.shape == z.shape and torch.isfinite(eps).all()
    if prediction == "v":  # the output layer starts at zero: v = 0 means eps = sqrt(1 - abar) z
        assert torch.allclose(eps, model.sqrt_1mab[999] * z, atol=1e-6)


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="arch"):
        LatentDenoiser(DenoiserConfig(arch="transformer"))


def test_save_load_round_trip(tmp_path):
    ae = Autoencoder(AutoencoderConfig(channels=(8, 16)))
    x, _ = _digits(32)
    ae.standardise(x)
    save_autoencoder(tmp_path / "ae", ae)
    back = load_autoencoder(tmp_path / "ae")
    assert torch.allclose(back.scale, ae.scale) and torch.allclose(back.decode(back.encode(x)), ae.eval().decode(ae.encode(x)))
    model = LatentDenoiser(DenoiserConfig(arch="conv", prediction="v", **SMALL))
    torch.nn.init.normal_(model.out.weight)  # not the zero init, so the comparison means something
    save_denoiser(tmp_path / "dn", model, {"note": "test"})
    loaded = load_denoiser(tmp_path / "dn")
    assert loaded.config == model.config
    z, y = torch.randn(3, 4, 7, 7), torch.tensor([1, 2, NULL_LABEL])
    assert torch.equal(loaded.eps(z, 500, y), model.eval().eps(z, 500, y))


def test_a_few_steps_lower_the_losses_on_a_tiny_subset():
    torch.manual_seed(0)  # the initial weights and latents below: the same whatever ran before in this process
    x, labels = _digits(32)
    ae = Autoencoder(AutoencoderConfig(channels=(8, 16)))
    ae.standardise(x)
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    first = float(autoencoder_loss(ae, x, torch.Generator().manual_seed(1)).detach())
    for _ in range(30):
        opt.zero_grad()
        autoencoder_loss(ae, x, gen).backward()
        opt.step()
    assert float(autoencoder_loss(ae, x, torch.Generator().manual_seed(1)).detach()) < 0.8 * first

    z = torch.randn(32, 4, 7, 7)
    model = LatentDenoiser(DenoiserConfig(arch="mlp", width=64, depth=2, emb_dim=16))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def held(seed: int = 7) -> float:
        with torch.no_grad():
            return sum(float(denoiser_loss(model, z, labels, torch.Generator().manual_seed(seed + k))) for k in range(5)) / 5

    before = held()
    for _ in range(60):
        opt.zero_grad()
        denoiser_loss(model, z, labels, gen).backward()
        opt.step()
    assert held() < 0.9 * before


def _tiny_latents():
    return torch.randn(40, 4, 7, 7, generator=torch.Generator().manual_seed(3)), torch.arange(40) % 10


def test_denoiser_resume_gives_the_same_state(tmp_path):
    """Training 8 steps at once equals 5 steps, an interruption, then resuming: weights, EMA and log rows."""
    def config() -> DenoiserConfig:
        return DenoiserConfig(arch="mlp", batch_size=8, warmup_steps=2, save_every=3, max_steps=8, **SMALL)

    train_denoiser(tmp_path / "once", config(), latents=_tiny_latents())
    train_denoiser(tmp_path / "twice", config(), latents=_tiny_latents(), stop_at=5)
    assert torch.load(tmp_path / "twice" / TRAIN_STATE, weights_only=False)["config"]["steps_done"] == 5
    train_denoiser(tmp_path / "twice", DenoiserConfig(arch="conv", max_steps=8), resume=True, latents=_tiny_latents())  # recipe from the state
    a, b = (torch.load(tmp_path / d / TRAIN_STATE, weights_only=False) for d in ("once", "twice"))
    assert a["config"]["steps_done"] == b["config"]["steps_done"] == 8
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    def rows(folder: str) -> list[tuple[str, str]]:
        with open(tmp_path / folder / TRAINING_LOG) as fh:
            return [(r["step"], r["loss"]) for r in csv.DictReader(fh)]

    assert rows("once") == rows("twice") and len(rows("once")) == 8  # one row per step
    assert load_denoiser(tmp_path / "twice").config.steps_done == 8


def test_autoencoder_cli_trains_and_resumes(tmp_path):
    x, _ = _digits(48)
    train_autoencoder(tmp_path, AutoencoderConfig(channels=(8, 16), batch_size=8, max_steps=3, save_every=100), data=x)
    train_autoencoder(tmp_path, AutoencoderConfig(channels=(8, 16), batch_size=8, max_steps=5, save_every=100), resume=True, data=x)
    state = torch.load(tmp_path / TRAIN_STATE, weights_only=False)
    assert state["config"]["steps_done"] == 5 and tuple(state["config"]["channels"]) == (8, 16)
    assert load_autoencoder(tmp_path).config.steps_done == 5
    with pytest.raises(SystemExit):
        main(["autoencoder", "--out", str(tmp_path / "x")])  # no budget given


def test_sampling_runs_and_is_seeded():
    model = LatentDenoiser(DenoiserConfig(arch="mlp", **SMALL)).eval()
    labels = torch.full((4,), NULL_LABEL)
    a, b = sample_latents(model, labels, steps=5, seed=1), sample_latents(model, labels, steps=5, seed=1)
    assert a.shape == (4, 4, 7, 7) and torch.equal(a, b)


def test_denoiser_cli_encodes_the_digits_trains_and_resumes(tmp_path):
    """The command line end to end at toy size: an autoencoder, then a unet denoiser on all 5,000 encoded digits."""
    x, _ = _digits(32)
    train_autoencoder(tmp_path / "ae", AutoencoderConfig(channels=(8, 16), batch_size=8, max_steps=1), data=x)
    args = ["denoiser", "--out", str(tmp_path / "dn"), "--autoencoder", str(tmp_path / "ae"), "--arch", "unet", "--width", "16",
            "--depth", "1", "--prediction", "v", "--loss-weighting", "min_snr", "--batch-size", "16", "--max-steps", "2"]
    assert main(args) == 0
    assert main(["denoiser", "--out", str(tmp_path / "dn"), "--max-steps", "3", "--resume"]) == 0  # autoencoder and recipe from the state
    model = load_denoiser(tmp_path / "dn")
    assert (model.config.arch, model.config.width, model.config.steps_done, model.config.loss_weighting) == ("unet", 16, 3, "min_snr")
    with open(tmp_path / "dn" / TRAINING_LOG) as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["1", "2", "3"]
