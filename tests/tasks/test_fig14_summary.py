"""The ten-digit Fig. 14 driver's bookkeeping: finished digits are recognised from their kept files, the summary is
rebuilt from those files alone (no store), and the claim's verdict follows the paired intervals."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("mnist_fig14", REPO / "benchmarks" / "mnist_fig14.py")
fig14 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fig14)


def row(task: str, target: float, method: str, kl: float, fd: float, kl_diff: tuple | None = None, fd_diff: tuple | None = None) -> dict:
    """One matched run; `*_diff`: the paired interval of its value minus DNG's (None for DNG itself)."""
    record = {"task": task, "target": target, "method": method, "scale": 2.0, "run_id": f"{task}-{method}-{target}", "safe": True,
              "forbidden_rate": 0.001, "forbidden_rate__low": 0.0, "forbidden_rate__high": 0.004}
    for metric, value, diff in (("kl_classes", kl, kl_diff), ("fid_classifier", fd, fd_diff)):
        record |= {metric: value, metric + "__low": value * 0.9, metric + "__high": value * 1.1}
        low, high = diff if diff is not None else (None, None)
        record |= {metric + "__diff": None if diff is None else (low + high) / 2, metric + "__diff_low": low,
                   metric + "__diff_high": high, metric + "__significant": None if diff is None else (low > 0 or high < 0)}
    return record


def write_digit(out: Path, digit: int, rows: list[dict]) -> None:
    path = fig14.digit_file(out, digit)
    path.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def test_summary_is_rebuilt_from_the_kept_files(tmp_path):
    task0, task3 = "mnist-remove-0", "mnist-remove-3"
    write_digit(tmp_path, 0, [row(task0, 0.01, "dng", 0.05, 60), row(task0, 0.01, "np", 0.4, 300, (0.2, 0.5), (200, 280)),
                              row(task0, 0.01, "sld", 0.1, 90, (0.01, 0.09), (10, 50))])
    # digit 3: NP is significantly better on KL than DNG (reversed) and SLD is not resolved on the Fréchet distance
    write_digit(tmp_path, 3, [row(task3, 0.01, "dng", 0.05, 60), row(task3, 0.01, "np", 0.01, 70, (-0.06, -0.01), (5, 15)),
                              row(task3, 0.01, "sld", 0.1, 61, (0.01, 0.09), (-0.5, 3.0))])
    assert fig14.digit_done(tmp_path, 0, ["np", "sld", "dng"], [0.01])
    assert not fig14.digit_done(tmp_path, 0, ["np", "sld", "dng"], [0.01, 0.005])  # a target missing: run again
    assert not fig14.digit_done(tmp_path, 1, ["dng"], [0.01])
    args = argparse.Namespace(out=tmp_path, protocol="standard", targets="0.01", methods="np,sld,dng", digits="0-9", tolerance="0.1",
                              max_runs="8")
    assert fig14.write_summary(tmp_path, args, [0.01]) == [0, 3]
    text = (tmp_path / "README.md").read_text()
    assert (tmp_path / "fig14.png").stat().st_size > 1000
    assert "Digits done: 0, 3." in text
    claim = text[text.index("## Does the paper's claim hold?"):text.index("## mnist-remove-0")]
    lines = {line.split("|")[1].strip(): line for line in claim.splitlines() if line.startswith("| mnist")}
    assert lines[task0].count("holds") == 2
    assert "reversed: np better" in lines[task3] and "not resolved: sld" in lines[task3]
    assert "+0.35 [0.2, 0.5] significant" in text  # NP's KL minus DNG's on digit 0


def test_the_digits_default_scales_are_their_fig14_calibrations():
    """mnist-remove-K's default scales (digits 1-9) are the standard-protocol calibrations for 1% kept in the repo."""
    from negguide.bench.tasks.mnist_latent import STANDARD_CALIBRATED, method_defaults

    for digit, scales in STANDARD_CALIBRATED.items():
        kept = pd.read_csv(fig14.digit_file(REPO / "docs" / "results" / "mnist-fig14", digit))
        at_one_percent = kept[kept.target == 0.01]
        assert {m: float(s) for m, s in scales.items()} == dict(zip(at_one_percent.method, at_one_percent.scale)), digit
        defaults = dict(method_defaults(digit))
        assert dict(defaults["dng"])["scale"] == scales["dng"] and dict(defaults["np"])["scale"] == scales["np"]
