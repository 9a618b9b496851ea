"""The MNIST model's quality bar script, on a few samples and steps."""
from __future__ import annotations

import json

from negguide.bench import model_quality


def test_quality_script_reports_each_figure_with_interval_and_real_digits(tmp_path, capsys):
    assert model_quality.main(["--samples", "12", "--steps", "2", "--batch-size", "8", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "quality.json").read_text())
    assert report["samples"] == 12 and sum(report["class_histogram"]) == 12
    for side, n in (("generated", 12), ("real_held_out", 1000)):
        for name in ("confident_share", "kl_to_uniform", "fd_judge_all"):
            figure = report[side][name]
            assert figure["n"] == n and figure["low"] <= figure["high"]
    assert report["real_held_out"]["confident_share"]["value"] > 0.9  # the judge on its own held-out digits
    assert 0.0 <= report["generated"]["confident_share"]["value"] <= 1.0
    out = capsys.readouterr().out
    assert "target >= 0.92" in out and "target <= 0.01" in out
    assert (tmp_path / "unguided_grid.png").stat().st_size > 0
