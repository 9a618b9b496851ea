"""Submitting a method: suites, `bench submit` (calibrate and bundle), `bench import`, `bench verify`.

A suite is a named, versioned set of (task, protocol, safety targets). `submit` calibrates the
method to each target on each task (or runs it once where the task has no safety to calibrate) and
writes one bundle (results/bundle.py). `import_bundle` validates everything — schema, digests, task
versions, run ids, shapes, dtypes, and every metric recomputed from the per-sample records — and
stores the runs as `self-reported`; it never runs the submitted code. `verify_bundle` does run it:
it re-draws randomly chosen shards with the bundle's method, compares them to the bundle's samples,
and marks the runs `verified`.
"""
from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from negguide.bench.provenance import git_commit, package_versions
from negguide.bench.run import RunRequest, resolve, run_one
from negguide.bench.run.calibrate import calibrate
from negguide.bench.run.engine import artifacts_root, stored_result
from negguide.bench.run.executors import Executor
from negguide.bench.run.plan import ShardJob
from negguide.bench.run.shards import draw_shard, pick_device, runtime_for
from negguide.bench.tasks import get_task
from negguide.methods.errors import BenchError, did_you_mean
from negguide.methods.registry import NETWORK_PREDICTIONS, MethodSpec, is_file_spec, method_class, parameter_table
from negguide.results.artifacts import read_npz, write_bytes_atomic, write_npz_atomic
from negguide.results.bundle import (
    CalibrationEntry,
    FileEntry,
    Manifest,
    MethodEntry,
    MetricEntry,
    RunEntry,
    config_run_id,
    npz_bytes,
    read_bundle,
    sha256,
    write_bundle,
)
from negguide.results.store import CalibrationRecord, RunRecord, Store

METRIC_RTOL = 1e-9  # a stated metric must equal the one recomputed from the records (float round-off only)
SAMPLE_ATOL = {"f": 1e-6, "u": 1}  # re-drawn vs bundled samples: floats, and uint8 images (one intensity level)
SHARD_SIZE = 64


@dataclass(frozen=True)
class SuiteEntry:
    task: str
    protocol: str
    targets: tuple[float, ...]  # empty: no safety to calibrate; the method runs at its parameters


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    description: str
    entries: tuple[SuiteEntry, ...]


SUITES = {suite.name: suite for suite in (
    Suite("smoke", "1", "exact Gaussian mixtures, 1D and 2D, at 1% forbidden (about a minute on a laptop)",
          (SuiteEntry("gmm1d-remove-1", "quick", (0.01,)), SuiteEntry("gmm2d-remove-3", "quick", (0.01,)))),
    Suite("mnist", "1", "MNIST removal of digits 0, 3 and 8 at the standard protocol (2,048 samples), 1% forbidden",
          tuple(SuiteEntry(f"mnist-remove-{k}", "standard", (0.01,)) for k in (0, 3, 8))),
    Suite("paper", "1", "the paper's protocol on CIFAR-10 (remove airplane) and Stable Diffusion 2 (needs a GPU and the weights)",
          (SuiteEntry("cifar10-remove-0", "paper", (0.01,)), SuiteEntry("sd2-related-unrelated", "paper", ()))),
)}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise BenchError(f"unknown suite {name!r}{did_you_mean(name, list(SUITES))}; `bench list suites` shows all")
    return SUITES[name]


# ---- submit -------------------------------------------------------------------------------

def _run_entry(store: Store, run_id: str, calibration: CalibrationEntry | None, payloads: dict[str, bytes]) -> RunEntry:
    result = stored_result(store, run_id)
    row = store.query("SELECT config, digests, wall_seconds FROM runs WHERE run_id = ?", [run_id]).iloc[0]
    config = json.loads(row.config)
    folder = Path(result["artifacts_dir"])
    files = {}
    for kind in ("samples", "records", "traces"):
        arrays = read_npz(folder / f"{kind}.npz")
        if arrays is None:
            raise BenchError(f"run {run_id} has no {kind}.npz in {folder}; run it again with --force")
        payload = npz_bytes(arrays)
        path = f"runs/{run_id}/{kind}.npz"
        payloads[path] = payload
        files[kind] = FileEntry(path=path, sha256=sha256(payload), bytes=len(payload))
    metrics = {name: MetricEntry(value=value, low=result["intervals"][name][0], high=result["intervals"][name][1],
                                 interval=result["interval_methods"].get(name, "none"), samples=result["metric_samples"][name])
               for name, value in result["metrics"].items()}
    traces = {r.name: {"t": [], "mean": []} for r in store.traces(run_id).itertuples()}
    for r in store.traces(run_id).itertuples():
        traces[r.name]["t"].append(int(r.t))
        traces[r.name]["mean"].append(float(r.mean))
    task = get_task(result["task"])
    network = set(method_class(config["method_spec"]).needs) & set(NETWORK_PREDICTIONS)
    predictions = len(network | ({"null"} if task.family == "text-to-image" else set()))
    return RunEntry(run_id=run_id, task=result["task"], task_version=result["task_version"], protocol=result["protocol"], config=config,
                    seed=result["seed"], samples=result["samples"], steps=result["steps"], variance=result["variance"], params=result["params"],
                    metrics=metrics, digests=json.loads(row.digests) if isinstance(row.digests, str) else {}, traces_summary=traces,
                    wall_time_s=float(row.wall_seconds), network_evaluations_per_image=predictions * result["steps"], calibration=calibration,
                    files=files)


def _method_entry(spec: str, params: dict) -> MethodEntry:
    cls = method_class(spec)
    source, digest = None, MethodSpec.of(spec, {}).source_digest
    if is_file_spec(spec):
        source = Path(spec.split(":", 1)[0]).read_text()
    return MethodEntry(name=cls.name, spec=spec, summary=cls.summary, needs=list(cls.needs), parameters=params,
                       defaults={row["name"]: row["default"] for row in parameter_table(cls)}, source=source, source_digest=digest)


def submit(spec: str, suite: Suite, out: Path, store: Store, *, submitter: str, params: dict | None = None,
           executor: Executor | None = None, progress: bool = False) -> tuple[Path, list[str]]:
    """Calibrate the method on every entry of the suite and write one bundle; returns its path and run ids."""
    params = dict(params or {})
    if "scale" in params:
        raise BenchError("submit calibrates the scale per task: drop --param scale=...")
    method = _method_entry(spec, params)
    store.check(writing=True)
    payloads: dict[str, bytes] = {}
    runs = []
    for entry in suite.entries:
        request = RunRequest(task=entry.task, method=spec, params=params, protocol=entry.protocol)
        if not entry.targets:
            outcome = run_one(resolve(request), store, executor, progress=progress)
            runs.append(_run_entry(store, outcome.run_id, None, payloads))
        for target in entry.targets:
            found = calibrate(request, target, store, executor, progress=progress)
            if found.chosen is None:
                raise BenchError(f"{method.name} did not reach forbidden share <= {target} on {entry.task} within the run budget; "
                                 "no bundle written (raise the method's scale range or its parameters)")
            calibration = CalibrationEntry(target=target, scale=found.chosen.scale, monotone=not found.violations, points=found.as_dict()["points"])
            runs.append(_run_entry(store, found.chosen.run_id, calibration, payloads))
    manifest = Manifest(schema_version=1, harness={"package": "negguide-bench", "version": package_versions().get("negguide-bench"), "commit": git_commit()},
                        submitter=submitter, created_at=time.time(), suite={"name": suite.name, "version": suite.version}, method=method,
                        packages=package_versions(), hardware=_hardware(), runs=runs)
    write_bundle(out, manifest, payloads)
    return out, [run.run_id for run in runs]


def _hardware() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch_threads": torch.get_num_threads()}


# ---- import -------------------------------------------------------------------------------

def _close(stated: float | None, recomputed: float) -> bool:
    if stated is None:
        return recomputed != recomputed
    return bool(np.isclose(stated, recomputed, rtol=METRIC_RTOL, atol=1e-12, equal_nan=True))


def _check_run(bundle, run: RunEntry) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Everything about one run that can be checked without running its method; its arrays."""
    if config_run_id(run.config) != run.run_id:
        raise BenchError(f"bundle run {run.run_id}: its config hashes to {config_run_id(run.config)}, not its run id")
    for key in ("task", "task_version", "seed", "samples", "steps", "params"):
        if run.config.get(key) != getattr(run, key):
            raise BenchError(f"bundle run {run.run_id}: {key} {getattr(run, key)!r} differs from its config's {run.config.get(key)!r}")
    task = get_task(run.task)
    if task.version != run.task_version:
        raise BenchError(f"bundle run {run.run_id}: task {run.task} version {run.task_version} is not this harness's ({task.version}); "
                         "re-submit with the current harness")
    samples, records, traces = (bundle.arrays(run, kind) for kind in ("samples", "records", "traces"))
    x = samples.get("x")
    if x is None or x.ndim < 2 or len(x) != run.samples or x.dtype.kind not in "fu":
        raise BenchError(f"bundle run {run.run_id}: samples.npz must hold x with {run.samples} rows of numbers, got "
                         f"{None if x is None else (x.shape, x.dtype.str)}")
    if "x" in records and not np.array_equal(records["x"], x.reshape(len(x), -1)):  # exact tasks judge the samples themselves
        raise BenchError(f"bundle run {run.run_id}: the samples differ from the samples its records were judged on")
    for name, values in records.items():
        if values.dtype.kind not in "biuf" or len(values) > run.samples:
            raise BenchError(f"bundle run {run.run_id}: record {name!r} has dtype {values.dtype.str} and {len(values)} rows; "
                             f"records are numbers, at most one row per sample")
    per_step = {name: values for name, values in traces.items() if name != "t"}
    for name, values in per_step.items():
        if values.ndim != 2 or values.shape[1] != run.samples or values.dtype.kind != "f" or values.shape[0] != len(traces.get("t", ())):
            raise BenchError(f"bundle run {run.run_id}: trace {name!r} must be float [recorded steps, {run.samples}], got {values.shape} {values.dtype.str}")
    runtime = runtime_for(task, pick_device(task))
    wanted = tuple(run.config["metrics"])
    recomputed = {s.name: s for s in runtime.statistics(records, per_step, wanted) if s.name in wanted}
    if set(recomputed) != set(run.metrics):
        raise BenchError(f"bundle run {run.run_id}: states metrics {sorted(run.metrics)}, the records give {sorted(recomputed)}")
    for name, stated in run.metrics.items():
        value, interval = recomputed[name].value(), recomputed[name].interval()
        if not (_close(stated.value, value) and _close(stated.low, interval.low) and _close(stated.high, interval.high)):
            raise BenchError(f"bundle run {run.run_id}: metric {name} states {stated.value} [{stated.low}, {stated.high}], its records give "
                             f"{value} [{interval.low}, {interval.high}]")
    return samples, records, traces


def import_bundle(path: Path, store: Store) -> list[str]:
    """Validate the whole bundle, then store its runs as self-reported in one transaction; returns their ids."""
    store.check(writing=True)
    bundle = read_bundle(path)
    manifest = bundle.manifest
    checked = {run.run_id: _check_run(bundle, run) for run in manifest.runs}
    rows, staged = [], []
    root = artifacts_root(store)
    try:
        for run in manifest.runs:
            samples, per_sample, traces = checked[run.run_id]
            staging = Path(tempfile.mkdtemp(dir=_ensure(root), prefix=f".import-{run.run_id}-"))
            staged.append((staging, root / run.run_id))
            write_npz_atomic(staging / "samples.npz", **samples)
            write_npz_atomic(staging / "records.npz", **per_sample)
            write_npz_atomic(staging / "traces.npz", **traces)
            write_bytes_atomic(staging / "config.json", json.dumps(run.config, indent=2, sort_keys=True).encode())
            rows.append(_record(manifest, run, root / run.run_id, per_sample, traces))
        store.write_runs(rows)
        for run in manifest.runs:
            if run.calibration is not None:  # the matched-safety headline shows imported runs too
                store.write_calibration(CalibrationRecord(
                    f"import-{run.run_id}-{run.calibration.target:g}", run.task, manifest.method.name,
                    json.dumps(manifest.method.parameters, sort_keys=True), run.calibration.target, run.calibration.scale, run.run_id,
                    run.calibration.monotone, json.dumps(run.calibration.points), time.time()))
    except BaseException:
        for staging, _ in staged:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    for staging, final in staged:  # the store is written: move the arrays where its rows point
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    return [run.run_id for run in manifest.runs]


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _record(manifest: Manifest, run: RunEntry, folder: Path, records: dict[str, np.ndarray], traces: dict[str, np.ndarray]) -> RunRecord:
    from negguide.bench.run.engine import summarise_traces

    task = get_task(run.task)
    per_step = {name: values for name, values in traces.items() if name != "t"}
    labels = records.get("label")
    metric_rows = [{"name": name, "value": m.value, "higher_is_better": _higher(name), "samples": m.samples, "low": m.low, "high": m.high,
                    "interval": m.interval} for name, m in run.metrics.items()]
    now = time.time()
    return RunRecord(run_id=run.run_id, task=run.task, task_version=run.task_version, method=manifest.method.name, params=run.params,
                     profile=run.protocol, seed=run.seed, samples=run.samples, steps=run.steps, config=run.config,
                     git_commit=manifest.harness.get("commit"), packages=manifest.packages, timings={"sampling_s": run.wall_time_s, "imported_at": now},
                     started_at=now - run.wall_time_s, finished_at=now, artifacts_dir=str(folder), metrics=metric_rows,
                     traces=summarise_traces(traces.get("t", np.zeros(0)), per_step),
                     class_counts=np.bincount(labels, minlength=task.n_classes).tolist() if labels is not None and task.n_classes else [],
                     protocol=run.protocol, variance=run.variance, digests=run.digests,
                     provenance="self-reported", submitter=manifest.submitter,
                     task_info={"version": task.version, "family": task.family, "removed": task.removed, "n_classes": task.n_classes,
                                "metrics": list(task.metrics), "details": task.details(), **task.headline()},
                     method_info={"summary": manifest.method.summary, "needs": manifest.method.needs, "spec": manifest.method.spec,
                                  "defaults": manifest.method.defaults, "submitter": manifest.submitter})


def _higher(name: str) -> bool:
    from negguide.metrics.base import METRICS

    return METRICS[name].higher_is_better


# ---- verify -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verification:
    verified: bool
    checked_shards: int
    runs: list[str]
    mismatch: str | None = None

    def as_dict(self) -> dict:
        return {"verified": self.verified, "checked_shards": self.checked_shards, "runs": self.runs, "mismatch": self.mismatch}


def _method_spec(manifest: Manifest, folder: Path) -> str:
    """The spec that rebuilds the bundle's method here: a registered name, or its source written to a file of ours."""
    method = manifest.method
    if method.source is None:
        return method.spec
    file_name, class_name = Path(method.spec.split(":", 1)[0]).name, method.spec.rsplit(":", 1)[1]
    (folder / file_name).write_text(method.source)
    return f"{folder / file_name}:{class_name}"


def _matches(drawn: np.ndarray, stated: np.ndarray) -> bool:
    if drawn.shape != stated.shape:
        return False
    if stated.dtype.kind == "u":
        return bool(np.abs(drawn.astype(np.int64) - stated.astype(np.int64)).max(initial=0) <= SAMPLE_ATOL["u"])
    return bool(np.allclose(drawn, stated, rtol=1e-6, atol=SAMPLE_ATOL["f"]))


def verify_bundle(path: Path, store: Store, shards: int = 2, seed: int = 0, device: str | None = None) -> Verification:
    """Re-draw `shards` random shards of every run with the bundle's method and compare; mark the runs verified."""
    bundle = read_bundle(path)
    manifest = bundle.manifest
    rng = np.random.default_rng(seed)
    checked = 0
    with tempfile.TemporaryDirectory(prefix="negguide-verify-") as folder:
        spec = _method_spec(manifest, Path(folder))
        digest = MethodSpec.of(spec, {}).source_digest
        if manifest.method.source is not None and digest != manifest.method.source_digest:
            return Verification(False, 0, [], f"the method source digests to {digest}, the manifest says {manifest.method.source_digest}")
        for run in manifest.runs:
            samples, _, _ = _check_run(bundle, run)
            task = get_task(run.task)
            method = MethodSpec.of(spec, run.params)
            starts = list(range(0, run.samples, SHARD_SIZE))
            for start in sorted(rng.choice(starts, size=min(shards, len(starts)), replace=False)):
                stop = min(start + SHARD_SIZE, run.samples)
                job = ShardJob(task, method, run.steps, run.seed, run.variance, int(start), int(stop), Path(folder) / "unused.npz")
                device_here = pick_device(task, device)
                drawn = runtime_for(task, device_here).to_artifact(torch.from_numpy(draw_shard(job, device_here)["x"]))
                checked += 1
                if not _matches(drawn, samples["x"][start:stop]):
                    return Verification(False, checked, [r.run_id for r in manifest.runs],
                                        f"run {run.run_id} ({run.task}): samples {start}-{stop} re-drawn here differ from the bundle's")
    present = set(store.runs().run_id) if store.exists() else set()
    mine = [run.run_id for run in manifest.runs if run.run_id in present]
    if mine:
        store.mark_verified(mine)
    return Verification(True, checked, [run.run_id for run in manifest.runs])
