"""The latent MNIST tasks (mnist-remove-K, version 2) end to end, on tiny models trained here by the project's
training code (the shipped ones are measured by bench/model_quality.py), and the pixel tasks under their names."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_json

from negguide.bench.cli import main as bench_main
from negguide.bench.tasks import get_task
from negguide.bench.tasks.mnist_latent import MnistLatentRuntime
from negguide.datasets.mnist import load_mnist, negation_split, to_model_range
from negguide.datasets.mnist_latent import AutoencoderConfig, load_autoencoder
from negguide.datasets.train_mnist_latent import main as train_main
from negguide.datasets.train_mnist_latent import train_autoencoder
from negguide.methods.schedule import Schedule

TINY = ["--task", "mnist-remove-0", "--samples", "6", "--steps", "3"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    """A toy autoencoder (one step on 32 digits) and a toy unet denoiser (one step on all 5,000 encoded digits)."""
    root = tmp_path_factory.mktemp("latent-models")
    images, _ = load_mnist()
    train_autoencoder(root / "ae", AutoencoderConfig(channels=(8, 16), batch_size=8, max_steps=1), data=to_model_range(images[::157]))
    assert train_main(["denoiser", "--out", str(root / "dn"), "--autoencoder", str(root / "ae"), "--arch", "unet", "--width", "16",
                       "--depth", "1", "--prediction", "v", "--batch-size", "16", "--max-steps", "1"]) == 0
    return root


@pytest.fixture
def latent_env(tiny_models, monkeypatch) -> Path:
    monkeypatch.setenv("BENCH_MNIST_AUTOENCODER", str(tiny_models / "ae"))
    monkeypatch.setenv("BENCH_MNIST_LATENT", str(tiny_models / "dn"))
    return tiny_models


def test_the_latent_model_holds_the_name_and_the_pixel_model_keeps_its_own():
    latent, pixel = get_task("mnist-remove-3"), get_task("mnist-pixel-remove-3")
    assert (latent.version, latent.shape, latent.removed) == ("2", (4, 7, 7), 3)
    assert (pixel.version, pixel.shape, pixel.removed) == ("1", (1, 28, 28), 3)
    assert latent.describe()["space"].startswith("latent") and latent.describe()["pixel_task"] == "mnist-pixel-remove-3"
    assert "latent space" in latent.description


def test_a_latent_run_is_judged_and_stored_as_decoded_digits(db, capsys, latent_env):
    result = run_json(capsys, "--method", "dng", *TINY, "--batch-size", "4")
    assert set(result["metrics"]) == {"forbidden_rate", "kl_classes", "fid_classifier"}
    assert all(n == 6 for n in result["metric_samples"].values())
    x = np.load(Path(result["artifacts_dir"]) / "samples.npz")["x"]
    assert x.dtype == np.uint8 and x.shape == (6, 1, 28, 28)


def test_a_samples_digits_do_not_depend_on_how_the_run_is_split(db, capsys, latent_env):
    first = run_json(capsys, "--method", "np", *TINY, "--batch-size", "2")
    second = run_json(capsys, "--method", "np", *TINY, "--batch-size", "5", "--force")
    a, b = (np.load(Path(r["artifacts_dir"]) / "samples.npz")["x"] for r in (first, second))
    assert np.array_equal(a, b)
    assert first["metrics"] == pytest.approx(second["metrics"], rel=1e-9)


def test_the_negation_set_is_the_removed_digits_encoded(latent_env):
    runtime = MnistLatentRuntime(removed=7, device=torch.device("cpu"))
    step = Schedule().steps(10)[0]
    z = torch.randn(3, 4, 7, 7)
    preds = runtime.denoiser(z, step, ("uncond", "neg", "negation", "negation_set"))
    images, _ = load_mnist()
    expected = load_autoencoder(latent_env / "ae").encode(to_model_range(images[negation_split(7)["negation"]]))
    assert preds["negation_set"].shape == (3, len(expected), 4, 7, 7)
    torch.testing.assert_close(preds["negation_set"][1], expected, rtol=1e-6, atol=1e-6)
    assert preds["uncond"].shape == preds["neg"].shape == preds["negation"].shape == z.shape
    assert runtime.to_artifact(z).shape == (3, 1, 28, 28)


def test_missing_latent_model_is_one_line_exit_2(db, capsys, tmp_path, monkeypatch, latent_env):
    monkeypatch.setenv("BENCH_MNIST_LATENT", str(tmp_path / "nowhere"))
    assert bench_main(["run", "--method", "dng", *TINY]) == 2
    err = capsys.readouterr().err
    assert "missing MNIST model files" in err and "train_mnist_latent denoiser" in err and err.count("\n") == 1
    assert not db.exists()


def test_the_first_command_shows_np_at_the_tasks_defaults_beside_dng_and_unguided(db, capsys, latent_env):
    """`bench run --method dng --task mnist-remove-0`: DNG at the task's defaults, beside unguided sampling and beside
    NP at its task default on the same noise, each with a paired comparison and one sentence."""
    result = run_json(capsys, "--method", "dng", *TINY, baseline=True)
    task = get_task("mnist-remove-0")
    assert task.compare_with == ("np",) and result["params"]["scale"] == float(task.defaults_for("dng").get("scale", 5.0))
    (beside,) = result["beside"]
    assert beside["method"] == "np" and beside["run_id"] not in (result["run_id"], result["baseline"]["run_id"])
    assert {row["metric"] for row in beside["comparison"]} == {"forbidden_rate", "kl_classes", "fid_classifier"}
    assert beside["summary"].startswith("On the same noise, dng against np: ")
    assert bench_main(["run", "--method", "dng", *TINY, "--no-progress"]) == 0  # the same command, as text: reused runs
    out = capsys.readouterr().out
    assert "beside the unguided run" in out and "beside np at this task's defaults" in out and "On the same noise, dng against np" in out
    hand_set = run_json(capsys, "--method", "dng", *TINY, "--param", "scale=2", baseline=True)
    assert hand_set["beside"] == []  # a hand-set scale is at matched safety with nothing
