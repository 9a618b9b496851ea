"""MNIST removal end to end on the shipped models (a few samples and steps: fast)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import run_json

from negguide.bench.cli import main as bench_main
from negguide.bench.tasks.mnist import MnistRuntime
from negguide.datasets.bundles import CPU_MICRO_BATCH, ConditionalBundle, ForwardPlan
from negguide.metrics.classes import kl_classes

TINY = ["--task", "mnist-pixel-remove-0", "--samples", "6", "--steps", "3", "--batch-size", "4"]


def test_mnist_run_end_to_end(db, capsys):
    result = run_json(capsys, "--method", "dng", *TINY)
    assert set(result["metrics"]) == {"forbidden_rate", "kl_classes", "fid_classifier"}
    assert all(n == 6 for n in result["metric_samples"].values())
    artifacts = Path(result["artifacts_dir"])
    x = np.load(artifacts / "samples.npz")["x"]
    assert x.dtype == np.uint8 and x.shape == (6, 1, 28, 28)
    assert (artifacts / "grid.png").stat().st_size > 0


def _forward_sizes(bundle: ConditionalBundle, x: torch.Tensor, names: tuple[str, ...]) -> tuple[list[int], dict]:
    calls = []
    hook = bundle.model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        preds = bundle(x, type("S", (), {"t": 500})(), names)
    finally:
        hook.remove()
    return calls, preds


def test_cpu_forwards_run_in_micro_batches_one_prediction_at_a_time():
    runtime = MnistRuntime(removed=3, device=torch.device("cpu"))
    bundle: ConditionalBundle = runtime.denoiser
    assert bundle.plan == ForwardPlan(micro_batch=CPU_MICRO_BATCH, stack_predictions=False)
    x = torch.randn(2 * CPU_MICRO_BATCH + 2, 1, 28, 28)
    calls, micro = _forward_sizes(bundle, x, ("uncond", "neg"))
    assert calls == [CPU_MICRO_BATCH, CPU_MICRO_BATCH, 2] * 2
    bundle.plan = ForwardPlan(micro_batch=None, stack_predictions=True)  # the GPU default: one stacked forward
    calls, stacked = _forward_sizes(bundle, x, ("uncond", "neg"))
    assert calls == [2 * len(x)]
    for name in ("uncond", "neg"):
        torch.testing.assert_close(micro[name], stacked[name], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(micro["uncond"], micro["neg"])  # each prediction got its own label


def test_missing_checkpoint_is_one_line_exit_2(db, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_MNIST_DDPM", str(tmp_path / "nowhere"))
    assert bench_main(["run", "--method", "dng", *TINY]) == 2
    err = capsys.readouterr().err
    assert "missing MNIST model files" in err and "bench train ddpm" in err and err.count("\n") == 1
    assert not db.exists()


def test_corrupt_checkpoint_is_one_line_exit_2(db, capsys, tmp_path, monkeypatch):
    broken = tmp_path / "ddpm"
    broken.mkdir()
    source = Path(__file__).resolve().parents[2] / "datasets" / "weights" / "mnist-ddpm"
    (broken / "config.json").write_text((source / "config.json").read_text())
    (broken / "ema.safetensors").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("BENCH_MNIST_DDPM", str(broken))
    assert bench_main(["run", "--method", "dng", *TINY]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not db.exists()


def test_class_out_of_range_and_unknown_profile(db, capsys):
    assert bench_main(["run", "--method", "dng", "--task", "mnist-remove-10"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert bench_main(["run", "--method", "dng", "--task", "mnist-remove-0", "--profile", "fast"]) == 2
    assert "protocols: quick, standard, paper" in capsys.readouterr().err


def test_kl_classes_zero_count_smoothing():
    """A kept class with no sample gives a finite KL; forbidden samples raise it."""
    balanced = np.repeat(np.arange(1, 10), 100)
    assert kl_classes(balanced, 0, 10) < 1e-3
    missing_one = np.repeat(np.arange(1, 9), 100)
    value = kl_classes(missing_one, 0, 10)
    expected = (1 / 9) * np.log((1 / 9) / (0.5 / (800 + 5))) + (8 / 9) * np.log((1 / 9) / (100.5 / 805))
    assert np.isfinite(value) and abs(value - expected) < 1e-12
    with_forbidden = np.concatenate([balanced, np.zeros(100, int)])
    assert kl_classes(with_forbidden, 0, 10) > kl_classes(balanced, 0, 10)


def test_our_datasets_folder_lives_under_the_negguide_namespace():
    """The folder `datasets/` is `negguide.datasets`: transformers, diffusers and torch-fidelity import beside it."""
    import diffusers  # noqa: F401
    import torch_fidelity  # noqa: F401
    import transformers  # noqa: F401

    import negguide.datasets

    assert Path(negguide.datasets.__file__).resolve().parent == Path(__file__).resolve().parents[2] / "datasets"


def test_frechet_distance_matches_the_general_matrix_square_root():
    """The eigendecomposition route equals Tr sqrtm(C1 C2) of the reference formula."""
    from scipy import linalg

    from negguide.metrics.frechet import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 20)), rng.normal(size=(60, 20)) * 1.3 + 0.2
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(linalg.sqrtm(c1 @ c2).real)
    assert abs(frechet_distance(a.mean(0), c1, b.mean(0), c2) - reference) < 1e-8
