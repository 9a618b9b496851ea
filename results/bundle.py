"""Result bundles: a method's runs carried out of one store and into another.

A bundle is a zip of JSON and `.npz` only: `manifest.json` (validated by the pydantic schema below)
and, per run, `runs/<run_id>/{samples,records,traces}.npz`, each listed in the manifest with its
SHA-256. Reading a bundle never executes or unpickles anything: members are read as bytes, arrays
load with `allow_pickle=False`, names with absolute paths or `..` are refused, and sizes are capped
before anything is decompressed. Every failure is a BenchError naming the first problem.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from negguide.methods.errors import BenchError

SCHEMA_VERSION = 1
MAX_BUNDLE_BYTES = 2 * 1024**3  # the zip file on disk
MAX_UNPACKED_BYTES = 4 * 1024**3  # all members, uncompressed (a zip bomb stops here)
MAX_MEMBERS = 10_000
ARRAY_FILES = ("samples", "records", "traces")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricEntry(Strict):
    value: float | None
    low: float | None
    high: float | None
    interval: str
    samples: int = Field(ge=0)


class FileEntry(Strict):
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class CalibrationEntry(Strict):
    target: float = Field(ge=0.0, lt=1.0)
    scale: float
    monotone: bool
    points: list[dict]


class RunEntry(Strict):
    run_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    task: str
    task_version: str
    protocol: str | None
    config: dict  # the resolved config the run id hashes
    seed: int
    samples: int = Field(gt=0)
    steps: int = Field(gt=0)
    variance: Literal["beta_tilde", "beta"]
    params: dict
    metrics: dict[str, MetricEntry]
    digests: dict[str, str]
    traces_summary: dict
    wall_time_s: float = Field(ge=0.0)
    network_evaluations_per_image: int = Field(ge=0)
    calibration: CalibrationEntry | None = None
    files: dict[Literal["samples", "records", "traces"], FileEntry]


class MethodEntry(Strict):
    name: str
    spec: str  # registered name, entry point, or file.py:Class
    summary: str
    needs: list[str]
    parameters: dict  # the fixed parameters the submitter chose (the scale is calibrated per run)
    defaults: dict
    source: str | None = None  # the method file's text, for file methods
    source_digest: str | None = None


class Manifest(Strict):
    schema_version: Literal[1]
    harness: dict  # version, git commit
    submitter: str
    created_at: float
    suite: dict  # name, version
    method: MethodEntry
    packages: dict[str, str]
    hardware: dict
    runs: list[RunEntry] = Field(min_length=1)


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_bundle(path: Path, manifest: Manifest, payloads: dict[str, bytes]) -> None:
    """Write the zip atomically (a temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("manifest.json", manifest.model_dump_json(indent=2))
            for name, payload in payloads.items():
                archive.writestr(name, payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Bundle:
    """A bundle read safely: its validated manifest and, on request, its arrays (never pickled objects)."""

    def __init__(self, manifest: Manifest, members: dict[str, bytes]):
        self.manifest, self._members = manifest, members

    def arrays(self, run: RunEntry, kind: str) -> dict[str, np.ndarray]:
        entry = run.files[kind]
        try:
            with np.load(io.BytesIO(self._members[entry.path]), allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except ValueError as exc:  # allow_pickle=False refuses object arrays
            raise BenchError(f"bundle file {entry.path}: {exc} (object arrays are refused: bundles carry plain numbers only)") from None
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise BenchError(f"bundle file {entry.path} is not a valid .npz: {exc}") from None


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name and ":" not in name


def read_bundle(path: Path) -> Bundle:
    """Open, check the archive's structure, sizes and digests, and validate the manifest."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"bundle {path} not found; pass the .zip that `bench submit` wrote")
    if path.stat().st_size > MAX_BUNDLE_BYTES:
        raise BenchError(f"bundle {path} is {path.stat().st_size} bytes, over the limit of {MAX_BUNDLE_BYTES}; split the suite")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise BenchError(f"bundle {path} is not a zip file") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise BenchError(f"bundle {path} has {len(infos)} members, over the limit of {MAX_MEMBERS}")
        for info in infos:
            if not _safe_name(info.filename):
                raise BenchError(f"bundle member {info.filename!r} lies outside the bundle (absolute path or '..'); refusing the bundle")
            if not (info.filename == "manifest.json" or info.filename.endswith(".npz")):
                raise BenchError(f"bundle member {info.filename!r} is neither manifest.json nor an .npz; bundles carry JSON and .npz only")
        if sum(info.file_size for info in infos) > MAX_UNPACKED_BYTES:
            raise BenchError(f"bundle {path} unpacks to more than {MAX_UNPACKED_BYTES} bytes; refusing it")
        names = {info.filename for info in infos}
        if "manifest.json" not in names:
            raise BenchError(f"bundle {path} has no manifest.json")
        members = {name: archive.read(name) for name in names}
    try:
        manifest = Manifest.model_validate_json(members["manifest.json"])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BenchError(f"bundle manifest: {where}: {first['msg']}") from None
    listed = {entry.path for run in manifest.runs for entry in run.files.values()}
    for run in manifest.runs:
        for kind, entry in run.files.items():
            if entry.path not in members:
                raise BenchError(f"bundle run {run.run_id}: file {entry.path} ({kind}) is missing from the archive")
            if sha256(members[entry.path]) != entry.sha256:
                raise BenchError(f"bundle run {run.run_id}: file {entry.path} does not match its SHA-256 in the manifest (changed after submission)")
    extra = names - listed - {"manifest.json"}
    if extra:
        raise BenchError(f"bundle member {sorted(extra)[0]!r} is not listed in the manifest")
    return Bundle(manifest, members)


def config_run_id(config: dict) -> str:
    """The run id a config hashes to (the same hash the engine uses)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
