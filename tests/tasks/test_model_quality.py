"""The MNIST model's quality bar script, on a few samples and steps."""
from __future__ import annotations

import json

import torch

from negguide.bench import model_quality


def test_quality_script_reports_each_figure_with_interval_and_real_digits(tmp_path, capsys):
    assert model_quality.main(["--samples", "12", "--steps", "2", "--batch-size", "8", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "quality.json").read_text())
    assert report["samples"] == 12 and sum(report["class_histogram"]) == 12
    for side, n in (("generated", 12), ("real_held_out", 1000)):
        for name in ("confident_share", "kl_to_uniform", "fd_judge_all", "judges_agree"):
            figure = report[side][name]
            assert figure["n"] == n and figure["low"] <= figure["high"]
    assert report["real_held_out"]["confident_share"]["value"] > 0.9  # the judge on its own held-out digits
    assert report["real_held_out"]["judges_agree"]["value"] > 0.9  # two independent judges on real digits
    assert report["task"] == "mnist-remove-0" and report["model"]["folder"] == "mnist-latent"
    assert 0.0 <= report["generated"]["confident_share"]["value"] <= 1.0
    out = capsys.readouterr().out
    assert "target >= 0.92" in out and "target <= 0.01" in out
    assert (tmp_path / "unguided_grid.png").stat().st_size > 0


def test_quality_script_draws_through_the_engine_with_any_sampler(tmp_path, capsys):
    from negguide.bench.run.plan import RunRequest

    args = ["--samples", "4", "--steps", "3", "--batch-size", "4", "--sampler", "ddim", "--sampler-param", "eta=0", "--out", str(tmp_path)]
    assert model_quality.main(args) == 0
    report = json.loads((tmp_path / "quality.json").read_text())
    assert report["sampler"] == {"name": "ddim", "settings": {"eta": 0.0}}
    assert "3 steps of ddim(eta=0.0)" in capsys.readouterr().out
    # the same samples as a stored run of the unguided method would have: one engine path
    x, *_ = model_quality.unguided_samples(RunRequest(task="mnist-remove-0", method="none", samples=4, steps=3, batch_size=2, sampler="ddim"))
    y, *_ = model_quality.unguided_samples(RunRequest(task="mnist-remove-0", method="none", samples=4, steps=3, batch_size=4, sampler="ddim"))
    # the latent model's samples, before decoding: the same bits from shards of 2 and of 4 rows (small batches are padded)
    assert x.shape == (4, 4, 7, 7) and torch.equal(x, y)
