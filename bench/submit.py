"""Submitting a method: suites, `bench submit` (calibrate and bundle), `bench import`, `bench verify`.

A suite is a named, versioned set of (task, protocol, safety targets). `submit` calibrates the
method to each target on each task (or runs it once where the task has no safety to calibrate) and
writes one bundle (results/bundle.py) with every run the calibrations tried.

`import_bundle` runs no submitted code. Every manifest field is either part of a run's hashed config
(checked against what this harness resolves for it) or recomputed here: the samples are judged
again (records are never taken from the bundle), metrics, protocol, digests and calibrations (from
their points' runs) are recomputed. It never replaces a stored run or deletes local artifacts, and
it is atomic: folders are staged, the store is written in one transaction, then the folders move
into place (a kill in between is finished or undone on the next open of the store).

`verify_bundle` does run the bundle's method, after its source matches its digest: it re-draws
individual sample ids chosen with fresh randomness (printed; `--seed` repeats a check) and compares
them, samples and traces, with the bundle's. It states its power: the smallest forged share of a
run's samples that it catches with 95% probability at the size checked.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from negguide.bench.provenance import git_commit, package_versions
from negguide.bench.run import RunRequest, resolve, run_one
from negguide.bench.run.calibrate import calibrate
from negguide.bench.run.engine import artifacts_root, run_record, stored_result
from negguide.bench.run.executors import Executor
from negguide.bench.run.plan import ResolvedRun
from negguide.bench.run.shards import check_device, draw_shard, pick_device, runtime_for
from negguide.bench.samplers import SamplerSpec
from negguide.bench.tasks import Task, TaskRuntime, get_task
from negguide.bench.tasks.spec import Judgement, judge
from negguide.methods.errors import BenchError, did_you_mean
from negguide.methods.registry import METHODS, builtin_method_names, is_file_spec
from negguide.results.artifacts import read_npz, write_bytes_atomic, write_npz_atomic
from negguide.results.bundle import (
    SCHEMA_VERSION,
    Bundle,
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
from negguide.results.leaderboard import safe_at
from negguide.results.store import UPPER95, CalibrationRecord, RunRecord, Store

METRIC_RTOL = 1e-9  # a stated metric must equal the one recomputed from the samples (float round-off only)
SAMPLE_TOLERANCE = {"f": 1e-6, "u": 1}  # re-drawn vs bundled samples: floats (relative and absolute), uint8 (one intensity level)
VERIFY_SAMPLES = 300  # per run: catches a forged share of 1% with 95% probability
POWER = 0.95
METHOD_KEYS = ("method", "method_spec", "method_source", "params")  # config fields about the method (checked by verify, which runs it)
FILE_SPEC = re.compile(r"^(?:.*/)?([A-Za-z0-9_][A-Za-z0-9_.-]*\.py):([A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True)
class SuiteEntry:
    task: str
    protocol: str
    targets: tuple[float, ...]  # empty: no safety to calibrate; the method runs at its parameters
    samples: int | None = None  # None: the protocol's (tests use small exploratory suites)
    steps: int | None = None


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


# ---- judging the samples a bundle carries ------------------------------------------------

def _as_tensor(runtime: TaskRuntime, artifact: np.ndarray) -> torch.Tensor:
    """The tensor a task's judge sees for its stored samples: floats as they are, uint8 images mapped to [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(artifact))
    x = x.to(torch.float32) / 127.5 - 1.0 if artifact.dtype == np.uint8 else x
    return x.to(runtime.dtype)


def _judge_samples(task: Task, runtime: TaskRuntime, artifact: np.ndarray, traces: dict[str, np.ndarray], metrics: tuple[str, ...],
                   where: str) -> Judgement:
    """Judge the stored samples themselves (what anyone can recompute), refusing a task whose samples do not round-trip."""
    if task.family == "text-to-image":
        raise BenchError(f"{where}: text-to-image runs cannot be judged again from their images here yet; import refuses them")
    x = _as_tensor(runtime, artifact)
    if not np.array_equal(runtime.to_artifact(x), artifact):
        raise BenchError(f"{where}: its samples are not what task {task.name} stores (they do not round-trip); refusing them")
    return judge(runtime, x, traces, metrics)


def _per_step(traces: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: values for name, values in traces.items() if name != "t"}


# ---- submit -------------------------------------------------------------------------------

def check_out(out: Path) -> None:
    """The bundle path can be written: checked before any run starts (a suite may take hours)."""
    out = Path(out)
    if out.is_dir():
        raise BenchError(f"--out {out} is a folder; give the path of the .zip to write")
    if out.suffix != ".zip":
        raise BenchError(f"--out {out} must end in .zip")
    parent = out.parent if str(out.parent) else Path(".")
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise BenchError(f"--out {out}: {ancestor} is not a writable folder")


def _run_entry(store: Store, run_id: str, payloads: dict[str, bytes]) -> RunEntry:
    """One stored run as a bundle entry: its config, samples and traces, and the metrics its samples give when judged again."""
    result = stored_result(store, run_id)
    row = store.query("SELECT config, wall_seconds FROM runs WHERE run_id = ?", [run_id]).iloc[0]
    config = json.loads(row.config)
    folder = Path(result["artifacts_dir"])
    arrays = {}
    for kind in ("samples", "traces"):
        arrays[kind] = read_npz(folder / f"{kind}.npz")
        if arrays[kind] is None:
            raise BenchError(f"run {run_id} has no {kind}.npz in {folder}; run it again with --force")
    task = get_task(config["task"])
    judgement = _judge_samples(task, runtime_for(task, pick_device(task)), arrays["samples"]["x"], _per_step(arrays["traces"]),
                               tuple(config["metrics"]), f"run {run_id}")
    files = {}
    for kind, values in arrays.items():
        payload = npz_bytes(values)
        path = f"runs/{run_id}/{kind}.npz"
        payloads[path] = payload
        files[kind] = FileEntry(path=path, sha256=sha256(payload), bytes=len(payload))
    metrics = {m.name: MetricEntry(value=m.value, low=m.low, high=m.high, interval=m.interval, samples=m.samples) for m in judgement.metrics}
    return RunEntry(run_id=run_id, config=config, metrics=metrics, wall_time_s=min(max(float(row.wall_seconds), 0.0), 1e7), files=files)


def _method_entry(spec: str, name: str) -> MethodEntry:
    if not is_file_spec(spec):
        return MethodEntry(name=name, spec=spec)
    source = Path(spec.split(":", 1)[0]).read_bytes()
    return MethodEntry(name=name, spec=spec, source=source.decode("utf-8"), source_digest=hashlib.sha256(source).hexdigest()[:16])


def submit(spec: str, suite: Suite, out: Path, store: Store, *, submitter: str, params: dict | None = None,
           executor: Executor | None = None, progress: bool = False, sampler: str | None = None,
           sampler_params: dict | None = None) -> tuple[Path, list[str]]:
    """Calibrate the method on every entry of the suite and write one bundle; returns its path and the chosen run ids.

    `sampler` (with its settings) replaces the protocols' DDPM: the runs are then exploratory, and their configs say so."""
    params = dict(params or {})
    if "scale" in params:
        raise BenchError("submit calibrates the scale per task: drop --param scale=...")
    check_out(out)
    store.check(writing=True)
    payloads: dict[str, bytes] = {}
    runs: dict[str, RunEntry] = {}
    calibrations, chosen = [], []
    for entry in suite.entries:
        request = RunRequest(task=entry.task, method=spec, params=params, protocol=entry.protocol, samples=entry.samples, steps=entry.steps,
                             sampler=sampler, sampler_params=dict(sampler_params or {}))
        if not entry.targets:
            outcome = run_one(resolve(request), store, executor, progress=progress)
            chosen.append(outcome.run_id)
        for target in entry.targets:
            found = calibrate(request, target, store, executor, progress=progress)
            if found.chosen is None:
                raise BenchError(f"{spec} did not reach forbidden share <= {target} on {entry.task} within the run budget; "
                                 "no bundle written (raise the method's scale range or its parameters)")
            calibrations.append(CalibrationEntry(task=entry.task, target=target, points=[p.run_id for p in found.points]))
            chosen.append(found.chosen.run_id)
    for run_id in dict.fromkeys([*chosen, *(p for c in calibrations for p in c.points)]):
        runs[run_id] = _run_entry(store, run_id, payloads)
    name = next(iter(runs.values())).config["method"]
    manifest = Manifest(schema_version=SCHEMA_VERSION,
                        harness={"package": "negguide-bench", "version": package_versions().get("negguide-bench"), "commit": git_commit()},
                        submitter=submitter, created_at=time.time(), suite={"name": suite.name, "version": suite.version},
                        method=_method_entry(spec, name), packages=package_versions(), hardware=_hardware(), runs=list(runs.values()),
                        calibrations=calibrations)
    write_bundle(out, manifest, payloads)
    return out, list(dict.fromkeys(chosen))


def _hardware() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch_threads": torch.get_num_threads()}


# ---- the bundle's method and configs (no submitted code runs here) ------------------------

def check_method(method: MethodEntry) -> None:
    """The method entry is well formed, its name free, its source matching its digest: before anything of it runs."""
    if is_file_spec(method.spec) or ":" in method.spec:
        if not FILE_SPEC.match(method.spec):
            raise BenchError(f"bundle method spec {method.spec!r} is not file.py:ClassName")
        if method.source is None or method.source_digest is None:
            raise BenchError(f"bundle method {method.spec!r} is a file method without its source and digest")
        digest = hashlib.sha256(method.source.encode("utf-8")).hexdigest()[:16]
        if digest != method.source_digest:
            raise BenchError(f"bundle method source digests to {digest}, the manifest says {method.source_digest}; refusing it")
        if method.name in builtin_method_names():
            raise BenchError(f"bundle method calls itself {method.name!r}, a built-in method's name; built-in names are reserved")
        return
    if method.source is not None or method.source_digest is not None:
        raise BenchError(f"bundle method {method.spec!r} is a registered name but carries a source; a file method's spec is file.py:ClassName")
    registered = METHODS.get(method.spec)  # this harness's own code or an installed plugin, never the bundle's
    if registered.name != method.name:
        raise BenchError(f"bundle method {method.spec!r} is registered here as {registered.name!r}, not {method.name!r}")


def _request_of(config: dict, method: str, params: dict) -> RunRequest:
    """The request a run config answers (the protocol found by its metrics); the sampler is carried by `_resolved_of`."""
    try:
        task = get_task(str(config["task"]))
        profile = next((name for name, p in task.protocols.items() if list(p.metrics or task.metrics) == config.get("metrics")), None)
        return RunRequest(task=task.name, method=method, params=params, samples=int(config["samples"]), steps=int(config["steps"]),
                          seed=int(config["seed"]), protocol=profile)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise BenchError(f"config field {exc} is missing or not a number") from None


def _resolved_of(config: dict, method: str, params: dict) -> ResolvedRun:
    """The run this harness resolves for a config: every field but the method's is recomputed here."""
    request = _request_of(config, method, params)
    if any(not isinstance(config.get(key), int) or isinstance(config.get(key), bool) for key in ("samples", "steps", "seed")):
        raise BenchError("config fields samples, steps and seed must be integers")
    try:
        sampler = SamplerSpec.from_config(config)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BenchError(f"config sampler is malformed ({type(exc).__name__}: {exc})") from None
    return dataclasses.replace(resolve(request), sampler=sampler)


def _plain(value: object) -> bool:
    """A parameter value a run config may hold: text, a bool, an integer or a finite float."""
    return isinstance(value, (str, bool, int)) or (isinstance(value, float) and bool(np.isfinite(value)))


def _differences(stated: dict, resolved: dict, skip: tuple[str, ...]) -> list[str]:
    return sorted(key for key in set(stated) | set(resolved) if key not in skip and stated.get(key) != resolved.get(key))


def _check_config(run: RunEntry, method: MethodEntry) -> ResolvedRun:
    """The config hashes to the run id, names the bundle's method and source, and is what this harness resolves for it."""
    config = run.config
    if config_run_id(config) != run.run_id:
        raise BenchError(f"bundle run {run.run_id}: its config hashes to {config_run_id(config)}, not its run id")
    for key, want in (("method", method.name), ("method_spec", method.spec), ("method_source", method.source_digest)):
        if config.get(key) != want:
            raise BenchError(f"bundle run {run.run_id}: config {key} {config.get(key)!r} differs from the bundle method's {want!r}")
    params = config.get("params")
    if not isinstance(params, dict) or not all(_plain(value) for value in params.values()):
        raise BenchError(f"bundle run {run.run_id}: config params must map names to plain finite values")
    task = get_task(str(config.get("task")))
    if task.version != config.get("task_version"):
        raise BenchError(f"bundle run {run.run_id}: task {task.name} version {config.get('task_version')} is not this harness's ({task.version}); "
                         "re-submit with the current harness")
    # Built-in and plugin methods are this harness's code: resolve them fully; a file method is resolved by verify.
    builtin = not is_file_spec(method.spec)
    try:
        resolved = _resolved_of(config, method.spec if builtin else "none", params if builtin else {})
    except BenchError as exc:
        raise BenchError(f"bundle run {run.run_id}: {exc}") from None
    different = _differences(config, resolved.config, () if builtin else METHOD_KEYS)
    if different:
        raise BenchError(f"bundle run {run.run_id}: config field {different[0]!r} is {config.get(different[0])!r}, this harness resolves "
                         f"{resolved.config.get(different[0])!r} for it")
    return resolved


# ---- import -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checked:
    """A bundle run after every check: its resolved form, arrays, and the judgement made here."""

    entry: RunEntry
    resolved: ResolvedRun
    samples: dict[str, np.ndarray]
    traces: dict[str, np.ndarray]
    judgement: Judgement

    def metric(self, name: str) -> tuple[float, float, float]:
        found = next(m for m in self.judgement.metrics if m.name == name)
        return found.value, found.low, found.high


def _check_arrays(bundle: Bundle, run: RunEntry, task: Task, runtime: TaskRuntime) -> tuple[dict, dict]:
    """Samples of the run's shape and dtype, finite; traces float [recorded steps, samples] with integer steps."""
    samples, traces = bundle.arrays(run, "samples"), bundle.arrays(run, "traces")
    n = run.config["samples"]
    expected = runtime.to_artifact(torch.zeros((1, *task.shape), dtype=runtime.dtype))
    x = samples.get("x")
    if set(samples) != {"x"} or x is None or x.shape != (n, *expected.shape[1:]) or x.dtype != expected.dtype:
        raise BenchError(f"bundle run {run.run_id}: samples.npz must hold only x, {expected.dtype} of shape {(n, *expected.shape[1:])}, got "
                         f"{sorted(samples)} {None if x is None else (x.shape, x.dtype.str)}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise BenchError(f"bundle run {run.run_id}: samples hold NaN or inf")
    steps = traces.get("t")
    if steps is None or steps.ndim != 1 or steps.dtype.kind not in "iu":
        raise BenchError(f"bundle run {run.run_id}: traces.npz must hold t, the traced steps as integers")
    for name, values in _per_step(traces).items():
        if values.ndim != 2 or values.shape != (len(steps), n) or values.dtype.kind != "f":
            raise BenchError(f"bundle run {run.run_id}: trace {name!r} must be float [{len(steps)}, {n}], got {values.shape} {values.dtype.str}")
    return samples, traces


def _check_run(bundle: Bundle, run: RunEntry, method: MethodEntry) -> Checked:
    """Everything about one run that can be checked without running its method; the samples judged here."""
    resolved = _check_config(run, method)
    task = resolved.task
    runtime = runtime_for(task, pick_device(task))
    samples, traces = _check_arrays(bundle, run, task, runtime)
    judgement = _judge_samples(task, runtime, samples["x"], _per_step(traces), resolved.metrics, f"bundle run {run.run_id}")
    recomputed = {m.name: m for m in judgement.metrics}
    if set(recomputed) != set(run.metrics):
        raise BenchError(f"bundle run {run.run_id}: states metrics {sorted(run.metrics)}, its samples give {sorted(recomputed)}")
    for name, stated in run.metrics.items():
        m = recomputed[name]
        if not all(_close(a, b) for a, b in ((stated.value, m.value), (stated.low, m.low), (stated.high, m.high))):
            raise BenchError(f"bundle run {run.run_id}: metric {name} states {stated.value} [{stated.low}, {stated.high}], its samples give "
                             f"{m.value} [{m.low}, {m.high}]")
    return Checked(run, resolved, samples, traces, judgement)


def _close(stated: float | None, recomputed: float | None) -> bool:
    recomputed = float("nan") if recomputed is None else recomputed
    if stated is None:
        return recomputed != recomputed
    return bool(np.isclose(stated, recomputed, rtol=METRIC_RTOL, atol=1e-12, equal_nan=True))


def _calibration(entry: CalibrationEntry, checked: dict[str, Checked], method: str, created: float) -> CalibrationRecord:
    """A calibration recomputed from its points' runs: the smallest scale meeting the target, and monotonicity."""
    if entry.task != next((c.resolved.task.name for c in checked.values() if c.entry.run_id in entry.points), entry.task) or \
            any(point not in checked for point in entry.points):
        raise BenchError(f"bundle calibration on {entry.task}: every point must be a run of the bundle on that task")
    runs = [checked[point] for point in dict.fromkeys(entry.points)]
    fixed = [{k: v for k, v in c.entry.config["params"].items() if k != "scale"} for c in runs]
    if any(c.resolved.task.name != entry.task for c in runs) or any(f != fixed[0] for f in fixed) or len({c.entry.run_id for c in runs}) != len(runs):
        raise BenchError(f"bundle calibration on {entry.task}: its points must be runs of that task differing in scale only")
    points = []
    for c in runs:
        scale = c.entry.config["params"].get("scale")
        if not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
            raise BenchError(f"bundle calibration on {entry.task}: run {c.entry.run_id} has no positive scale")
        if "forbidden_rate" not in {m.name for m in c.judgement.metrics}:
            raise BenchError(f"bundle calibration on {entry.task}: task reports no forbidden_rate, there is nothing to calibrate")
        value, low, high = c.metric("forbidden_rate")
        points.append({"scale": float(scale), "run_id": c.entry.run_id, "forbidden_rate": value, "interval": [low, high], "reused": False})
    points.sort(key=lambda p: p["scale"])
    meeting = [p for p in points if safe_at(p["interval"][1], entry.target)]  # the one rule: the upper 95% bound (docs/trust.md)
    if not meeting:
        raise BenchError(f"bundle calibration on {entry.task}: no point meets its target {entry.target:g}; nothing to headline")
    chosen = meeting[0]
    monotone = not any(b["interval"][0] > a["interval"][1] for i, a in enumerate(points) for b in points[i + 1:])
    key = hashlib.sha256(json.dumps([entry.task, entry.target, [p["run_id"] for p in points], UPPER95]).encode()).hexdigest()[:12]
    return CalibrationRecord(f"import-{key}", entry.task, method, json.dumps(fixed[0], sort_keys=True), entry.target, chosen["scale"],
                             chosen["run_id"], monotone, json.dumps(points), created, UPPER95)


def _check_suite(manifest: Manifest) -> None:
    suite = get_suite(manifest.suite.get("name", ""))
    if manifest.suite.get("version") != suite.version:
        raise BenchError(f"bundle suite {suite.name} version {manifest.suite.get('version')!r} is not this harness's ({suite.version})")


def _check_name_free(store: Store, manifest: Manifest) -> None:
    """A method name belongs to one submitter here: refuse a bundle whose name is shown for someone else's runs."""
    name = manifest.method.name
    owners = store.query("SELECT DISTINCT provenance, submitter FROM runs WHERE method = ?", [name])
    others = [row for row in owners.itertuples() if (row.provenance or "run here") == "run here" or row.submitter != manifest.submitter]
    if others:
        who = "runs made here" if (others[0].provenance or "run here") == "run here" else f"runs submitted by {others[0].submitter!r}"
        raise BenchError(f"method name {name!r} is already used in this store by {who}; give the class another `name` and submit again")


def import_bundle(path: Path, store: Store) -> list[str]:
    """Validate the whole bundle, then store its runs as self-reported, atomically; returns their ids."""
    store.check(writing=True)
    bundle = read_bundle(path)
    manifest = bundle.manifest
    check_method(manifest.method)
    _check_suite(manifest)
    checked = {run.run_id: _check_run(bundle, run, manifest.method) for run in manifest.runs}
    now = time.time()
    calibrations = [_calibration(entry, checked, manifest.method.name, now) for entry in manifest.calibrations]
    root = artifacts_root(store)
    present = set(store.query("SELECT run_id FROM runs").run_id) if store.exists() else set()
    for run_id in checked:
        if run_id in present:
            raise BenchError(f"run {run_id} is already in the store {store.path}; import never replaces a stored run: import into another --db")
        if (root / run_id).exists():
            raise BenchError(f"{root / run_id} already exists (a run made or begun here); import never touches local artifacts")
    _check_name_free(store, manifest)
    records = [_record(manifest, c, root / c.entry.run_id, now) for c in checked.values()]
    _stage_and_store(store, root, checked, records, calibrations)
    return [run.run_id for run in manifest.runs]


def _stage_and_store(store: Store, root: Path, checked: dict[str, Checked], records: list[RunRecord], calibrations: list[CalibrationRecord]) -> None:
    """Folders staged under one `.import-*` folder, the store written in one transaction, then the folders renamed into place.

    A kill before the commit leaves a staging folder the next open removes; after it, one the next open moves into place."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".import-"))
    (staging / "owner").write_text(str(os.getpid()))  # the next open leaves a live importer's folder alone
    try:
        for c in checked.values():
            folder = staging / c.entry.run_id
            write_npz_atomic(folder / "samples.npz", **c.samples)
            write_npz_atomic(folder / "records.npz", **c.judgement.records)
            write_npz_atomic(folder / "traces.npz", **c.traces)
            write_bytes_atomic(folder / "config.json", json.dumps(c.entry.config, indent=2, sort_keys=True).encode())
        store.write_import(records, calibrations)
    except BaseException:
        if not _stored(store, records[0].run_id):  # not committed: nothing of the bundle stays
            shutil.rmtree(staging, ignore_errors=True)
        else:
            (staging / "owner").unlink(missing_ok=True)
        raise
    (staging / "owner").unlink()  # committed: from here an interrupted import is finished by the next open
    for c in checked.values():
        os.rename(staging / c.entry.run_id, root / c.entry.run_id)
    shutil.rmtree(staging, ignore_errors=True)


def _stored(store: Store, run_id: str) -> bool:
    try:
        return not store.query("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).empty
    except BenchError:
        return False


def _record(manifest: Manifest, c: Checked, folder: Path, now: float) -> RunRecord:
    """An imported run's record: built like a local run's, with the bundle's method fields (`resolved` stands in for the
    method, whose code is not loaded), provenance and self-reported timings."""
    run, wall = c.entry, c.entry.wall_time_s
    return run_record(c.resolved, c.judgement, c.traces["t"], _per_step(c.traces), folder,
                      {"sampling_s": wall, "self_reported": True, "imported_at": now}, now - wall, now,
                      run_id=run.run_id, config=run.config, params=run.config["params"], method=manifest.method.name, git_commit=manifest.harness.get("commit"), packages=manifest.packages,
                      provenance="self-reported", submitter=manifest.submitter,
                      method_info={"spec": manifest.method.spec, "source_digest": manifest.method.source_digest,
                                   "submitter": manifest.submitter, "self_reported": True})


# ---- verify -------------------------------------------------------------------------------

def detectable_share(total: int, checked: int, power: float = POWER) -> float:
    """The smallest share of `total` samples that, if forged, `checked` samples drawn without replacement hit with `power`."""
    if checked >= total:
        return 1.0 / total
    from scipy.stats import hypergeom

    low, high = 1, total  # smallest m with P(no forged sample among the checked) <= 1 - power
    while low < high:
        middle = (low + high) // 2
        if hypergeom.pmf(0, total, middle, checked) <= 1.0 - power:
            high = middle
        else:
            low = middle + 1
    return low / total


def choose_ids(seed: int, run_id: str, total: int, count: int) -> np.ndarray:
    """The sample ids verify re-draws for one run: fresh per seed, independent across runs, sorted."""
    if count >= total:
        return np.arange(total)
    key = int.from_bytes(hashlib.sha256(f"{seed}:{run_id}".encode()).digest()[:8], "little")
    return np.sort(np.random.default_rng(key).choice(total, size=count, replace=False))


@dataclass(frozen=True)
class Verification:
    verified: bool
    seed: int
    runs: list[dict]  # run_id, task, samples, checked, detects_share
    mismatch: str | None = None
    marked: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        return {"verified": self.verified, "seed": self.seed, "checked_samples": sum(r["checked"] for r in self.runs), "runs": self.runs,
                "mismatch": self.mismatch, "marked": self.marked}


def _file_spec(method: MethodEntry, folder: Path) -> str:
    """The bundle's method written to a file of ours (its digest already matched); the spec that loads it."""
    match = FILE_SPEC.match(method.spec)
    (folder / match.group(1)).write_bytes(method.source.encode("utf-8"))
    return f"{folder / match.group(1)}:{match.group(2)}"


def _matches(drawn: np.ndarray, stated: np.ndarray) -> np.ndarray:
    """Per sample: whether the re-drawn values match the bundle's (floats to 1e-6, uint8 to one level)."""
    if drawn.shape != stated.shape:
        return np.zeros(len(stated), dtype=bool)
    flat_drawn, flat_stated = drawn.reshape(len(drawn), -1), stated.reshape(len(stated), -1)
    if stated.dtype.kind == "u":
        return (np.abs(flat_drawn.astype(np.int64) - flat_stated.astype(np.int64)) <= SAMPLE_TOLERANCE["u"]).all(axis=1)
    return np.isclose(flat_drawn, flat_stated, rtol=SAMPLE_TOLERANCE["f"], atol=SAMPLE_TOLERANCE["f"]).all(axis=1)


def _redraw(resolved: ResolvedRun, ids: np.ndarray, device: torch.device, folder: Path) -> dict[str, np.ndarray]:
    """Samples and traces of exactly these ids, drawn in batches of the run's batch size (sample i depends only on (seed, i))."""
    runtime = runtime_for(resolved.task, device)
    parts = []
    for start in range(0, len(ids), resolved.batch_size):
        chunk = ids[start:start + resolved.batch_size]
        arrays = draw_shard(resolved.job(0, len(chunk), folder / "unused.npz"), device, ids=chunk)
        arrays["x"] = runtime.to_artifact(torch.from_numpy(arrays["x"]))
        parts.append(arrays)
    traces = sorted(k for k in parts[0] if k.startswith("trace__"))
    return {"x": np.concatenate([p["x"] for p in parts]), "t": parts[0]["trace_t"],
            **{k.removeprefix("trace__"): np.concatenate([p[k] for p in parts], axis=1) for k in traces}}


def _compare(run: RunEntry, bundle: Bundle, drawn: dict[str, np.ndarray], ids: np.ndarray) -> str | None:
    """The first difference between re-drawn and bundled samples or traces, or None."""
    samples, traces = bundle.arrays(run, "samples"), bundle.arrays(run, "traces")
    bad = ids[~_matches(drawn["x"], samples["x"][ids])]
    if len(bad):
        return f"samples {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''} ({len(bad)} of {len(ids)} checked) differ from the bundle's"
    if not np.array_equal(drawn["t"], traces["t"]) or set(drawn) - {"x", "t"} != set(_per_step(traces)):
        return f"its traces name other steps or quantities than the bundle's ({sorted(set(drawn) - {'x', 't'})})"
    for name in sorted(set(drawn) - {"x", "t"}):
        bad = ids[~_matches(drawn[name].T, traces[name][:, ids].T)]
        if len(bad):
            return f"trace {name!r} of samples {', '.join(map(str, bad[:5]))} differs from the bundle's"
    return None


def verify_bundle(path: Path, store: Store, samples: int = VERIFY_SAMPLES, every: bool = False, seed: int | None = None,
                  device: str | None = None, announce: Callable[[str], None] | None = None) -> Verification:
    """Re-draw sample ids chosen with fresh randomness from every run with the bundle's method and compare; mark matching stored runs verified."""
    if samples < 1:
        raise BenchError(f"--samples must be >= 1, got {samples}")
    if seed is not None and not 0 <= seed < 2**63:
        raise BenchError(f"--seed must be between 0 and 2**63-1, got {seed}")
    check_device(device)
    seed = secrets.randbits(63) if seed is None else seed
    bundle = read_bundle(path)
    manifest = bundle.manifest
    check_method(manifest.method)  # the source matches its digest before any of it is written or run
    for run in manifest.runs:
        task = _check_config(run, manifest.method).task
        _check_arrays(bundle, run, task, runtime_for(task, pick_device(task, device)))
    plan = [{"run_id": run.run_id, "task": run.config["task"], "samples": run.config["samples"],
             "checked": run.config["samples"] if every else min(samples, run.config["samples"])} for run in manifest.runs]
    for row in plan:
        row["detects_share"] = detectable_share(row["samples"], row["checked"])
    if announce is not None:
        code = f"the method file {manifest.method.spec.split(':')[0]} (digest {manifest.method.source_digest}) carried by the bundle" \
            if manifest.method.source is not None else f"this harness's method {manifest.method.spec!r}"
        announce(f"verify now runs {code} to re-draw {sum(r['checked'] for r in plan)} samples; seed {seed} (--seed {seed} repeats this check)")
    with tempfile.TemporaryDirectory(prefix="negguide-verify-") as folder:
        spec = _file_spec(manifest.method, Path(folder)) if manifest.method.source is not None else manifest.method.spec
        for run, row in zip(manifest.runs, plan):
            config = run.config
            resolved = _resolved_of(config, spec, config["params"])
            different = _differences(config, resolved.config, ("method_spec",))
            if different:
                return Verification(False, seed, plan, f"run {run.run_id}: the bundle's method resolves config field {different[0]!r} to "
                                                       f"{resolved.config.get(different[0])!r}, the bundle states {config.get(different[0])!r}")
            ids = choose_ids(seed, run.run_id, row["samples"], row["checked"])
            drawn = _redraw(resolved, ids, pick_device(resolved.task, device), Path(folder))
            problem = _compare(run, bundle, drawn, ids)
            if problem:
                return Verification(False, seed, plan, f"run {run.run_id} ({run.config['task']}): {problem}")
    marked = _mark(store, bundle, seed, plan)
    return Verification(True, seed, plan, marked=marked)


def _mark(store: Store, bundle: Bundle, seed: int, plan: list[dict]) -> list[str]:
    """Mark verified the stored runs that hold exactly this bundle's samples and traces (imported from it)."""
    if not store.exists():
        return []
    rows = store.query("SELECT run_id, artifacts_dir, provenance FROM runs")
    folders = {r.run_id: r.artifacts_dir for r in rows.itertuples() if r.provenance in ("self-reported", "verified")}
    checks = []
    for run, row in zip(bundle.manifest.runs, plan):
        if run.run_id not in folders:
            continue
        stored = {kind: read_npz(Path(folders[run.run_id]) / f"{kind}.npz") for kind in ("samples", "traces")}
        same = all(stored[kind] is not None and set(stored[kind]) == set(bundle.arrays(run, kind))
                   and all(np.array_equal(stored[kind][k], v) for k, v in bundle.arrays(run, kind).items()) for kind in stored)
        if same:
            checks.append({**row, "seed": seed})
    if checks:
        store.mark_verified(checks)
    return [check["run_id"] for check in checks]
