"""The dashboard tests' store (a fixture of tests/conftest.py): real runs on two exact tasks, calibrations at two targets, two image runs.

Not a conftest.py of its own: test modules import helpers `from conftest import ...`, and two conftest modules would clash."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from negguide.bench.cli import main as bench_main
from negguide.results.artifacts import image_grid_png, write_bytes_atomic, write_npz_atomic
from negguide.results.store import RunRecord, Store

GMM1D, GMM2D = "gmm1d-remove-1", "gmm2d-remove-0"
IMAGES = "toy-images-remove-3"  # not a registered task: image pages must work from the store alone
QUICK = ["--samples", "256", "--steps", "50", "--no-progress"]
TARGETS = (0.05, 0.02)  # both reachable with 256 samples (0 of 256 has an upper 95% bound of 1.48%)


def write_image_run(store: Store, method: str, images: np.ndarray) -> None:
    """An image-task run written the way the runner writes one (for the grid and paired-grid paths)."""
    run_id = f"toyimages-{method}"
    folder = store.path.parent / "artifacts" / run_id
    write_npz_atomic(folder / "samples.npz", x=images)
    write_bytes_atomic(folder / "grid.png", image_grid_png(images))
    now = time.time()
    counts = np.bincount(np.arange(len(images)) % 10, minlength=10)
    store.write_run(RunRecord(
        run_id=run_id, task=IMAGES, task_version="1", method=method, params={"scale": 1.0}, profile="quick", seed=0,
        samples=len(images), steps=10, config={"task": IMAGES}, git_commit=None, packages={}, timings={},
        started_at=now - 1, finished_at=now, artifacts_dir=str(folder),
        metrics=[{"name": "forbidden_rate", "value": 0.0 if method == "dng" else 0.1, "higher_is_better": False, "samples": len(images)},
                 {"name": "fid", "value": 10.0, "higher_is_better": False, "samples": len(images)}],
        traces={"guidance_scale": {"t": [0, 500, 999], **{q: [0.0, 1.0, 2.0] for q in ("mean", "q05", "q25", "q50", "q75", "q95")}}},
        class_counts=counts.tolist(),
    ))


@pytest.fixture(scope="session")
def store_path(tmp_path_factory) -> Path:
    """Real small runs of NP, DNG, the exact-posterior DNG and unguided sampling on two exact tasks; NP and DNG
    calibrated at 5% on both tasks and NP at 2% on the first; two image runs with sample grids."""
    path = tmp_path_factory.mktemp("dashboard") / "bench.duckdb"
    commands = [
        ["run", "--method", "none", "--task", GMM1D],
        ["sweep", "--method", "np", "--task", GMM1D, "--param", "scale=0.5,3"],
        ["sweep", "--method", "dng", "--task", GMM1D, "--param", "scale=2,8"],
        ["run", "--method", "dng-exact", "--task", GMM1D, "--param", "scale=4"],
        ["run", "--method", "none", "--task", GMM2D],
        ["run", "--method", "dng", "--task", GMM2D],
        *(["calibrate", "--method", m, "--task", GMM1D, "--target", "0.05", "--max-runs", "4"] for m in ("np", "dng")),
        ["calibrate", "--method", "np", "--task", GMM1D, "--target", "0.02", "--max-runs", "4"],
        *(["calibrate", "--method", m, "--task", GMM2D, "--target", "0.05", "--max-runs", "4"] for m in ("np", "dng")),
    ]
    for command in commands:
        assert bench_main([*command, "--db", str(path), *QUICK]) == 0, command
    store = Store(path)
    images = np.random.default_rng(0).integers(0, 256, size=(16, 1, 8, 8), dtype=np.uint8)
    write_image_run(store, "none", images)
    guided = images.copy()
    guided[:5] = 255 - guided[:5]  # five images changed by "guidance"
    write_image_run(store, "dng", guided)
    return path
