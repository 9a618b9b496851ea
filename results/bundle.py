"""Result bundles: a method's runs carried out of one store and into another.

A bundle is a zip of JSON and `.npz` only: `manifest.json` (validated by the pydantic schema below)
and, per run, `runs/<run_id>/{samples,traces}.npz`, each listed in the manifest with its SHA-256.
Per-sample judge records are not carried: the importer judges the samples itself.

Reading a bundle never executes or unpickles anything and never trusts a declared size: members
are read in bounded chunks (at most their declared size, and a total budget), the `.npz` members
are parsed here (each `.npy` header is checked before any array is allocated; plain numbers only),
duplicate or unsafe names, encrypted members and unknown compressions are refused. Every failure
is a BenchError naming the first problem.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Annotated, BinaryIO, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from negguide.atomic import atomic_path
from negguide.methods.errors import BenchError

SCHEMA_VERSION = 2
MAX_BUNDLE_BYTES = 2 * 1024**3  # the zip file on disk
MAX_UNPACKED_BYTES = 4 * 1024**3  # all members, counted as they are actually inflated (a zip bomb stops here)
MAX_MANIFEST_BYTES = 64 * 1024**2
MAX_MEMBERS = 10_000
MAX_ARRAYS_PER_FILE = 64
MAX_NPY_HEADER = 4096
CHUNK = 1 << 20
ARRAY_FILES = ("samples", "traces")
ARRAY_KINDS = "biuf"  # bool, signed and unsigned integers, floats: nothing else loads
ALLOWED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)

Finite = Annotated[float, Field(allow_inf_nan=False)]
Digest64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ShortText = Annotated[str, Field(max_length=200)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricEntry(Strict):
    """A metric as the submitter computed it; the importer recomputes it and refuses a difference."""

    value: float | None
    low: float | None
    high: float | None
    interval: ShortText
    samples: int = Field(ge=0)


class FileEntry(Strict):
    path: Annotated[str, Field(max_length=300)]
    sha256: Digest64
    bytes: int = Field(ge=0, le=MAX_BUNDLE_BYTES)


class RunEntry(Strict):
    """One run: its resolved config (the run id hashes it), its arrays, and the metrics it states.

    Everything else about a run (protocol, variance, digests, records, class counts, traces summary)
    is recomputed from the config and the arrays by the importer, never read from here."""

    run_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    config: dict
    metrics: dict[ShortText, MetricEntry]
    wall_time_s: Annotated[float, Field(ge=0.0, le=1e7, allow_inf_nan=False)]  # self-reported, shown as such
    files: dict[Literal["samples", "traces"], FileEntry]


class CalibrationEntry(Strict):
    """A matched-safety calibration: its target and the runs it tried (all in the bundle); scale, choice
    and monotonicity are recomputed from those runs."""

    task: ShortText
    target: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
    points: list[Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]] = Field(min_length=1, max_length=100)


class MethodEntry(Strict):
    """The method: its name and spec as every run config states them, and a file method's source."""

    name: ShortText
    spec: Annotated[str, Field(max_length=500)]  # registered name, or file.py:Class
    source: Annotated[str, Field(max_length=1_000_000)] | None = None
    source_digest: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")] | None = None


class Manifest(Strict):
    schema_version: Literal[2]
    harness: dict[ShortText, ShortText | None]  # self-reported provenance
    submitter: ShortText
    created_at: Finite
    suite: dict[Literal["name", "version"], ShortText]
    method: MethodEntry
    packages: dict[ShortText, ShortText]
    hardware: dict[ShortText, ShortText | int | float | None]
    runs: list[RunEntry] = Field(min_length=1, max_length=1000)
    calibrations: list[CalibrationEntry] = Field(default_factory=list, max_length=100)


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_bundle(path: Path, manifest: Manifest, payloads: dict[str, bytes]) -> None:
    """Write the zip atomically: readers never see half a bundle, a failed write leaves none."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", manifest.model_dump_json(indent=2))
        for name, payload in payloads.items():
            archive.writestr(name, payload)


class Bundle:
    """A bundle read safely: its validated manifest and its arrays (plain numbers only)."""

    def __init__(self, manifest: Manifest, arrays: dict[str, dict[str, np.ndarray]]):
        self.manifest, self._arrays = manifest, arrays

    def arrays(self, run: RunEntry, kind: str) -> dict[str, np.ndarray]:
        return dict(self._arrays[run.files[kind].path])


class _Budget:
    """Bytes still allowed to be inflated from the whole bundle."""

    def __init__(self, total: int):
        self.left = total

    def take(self, count: int, what: str) -> None:
        self.left -= count
        if self.left < 0:
            raise BenchError(f"bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes (at {what}); refusing it")


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name and ":" not in name and "\x00" not in name


def _check_infos(infos: list[zipfile.ZipInfo], where: str, allowed: tuple[str, ...], limit: int) -> None:
    """Names, count, duplicates, encryption and compression of an archive's members, before reading any."""
    if len(infos) > limit:
        raise BenchError(f"{where} has {len(infos)} members, over the limit of {limit}")
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if name in seen:
            raise BenchError(f"{where}: member {name!r} appears twice; refusing an ambiguous archive")
        seen.add(name)
        if not _safe_name(name):
            raise BenchError(f"{where}: member {name!r} lies outside the bundle (absolute path or '..'); refusing the bundle")
        if not any(name == a or (a.startswith("*") and name.endswith(a[1:])) for a in allowed):
            raise BenchError(f"{where}: member {name!r} is not one of {', '.join(allowed)}; bundles carry JSON and .npz only")
        if info.flag_bits & 0x1:
            raise BenchError(f"{where}: member {name!r} is encrypted; bundles are plain zips")
        if info.compress_type not in ALLOWED_COMPRESSION:
            raise BenchError(f"{where}: member {name!r} uses compression method {info.compress_type}; only stored and deflated are read")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, budget: _Budget, where: str) -> bytes:
    """A member's bytes, read in chunks: never more than its declared size, `limit`, or the budget."""
    if info.file_size > limit:
        raise BenchError(f"{where}: member {info.filename!r} declares {info.file_size} bytes, over the limit of {limit}")
    parts, total = [], 0
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(min(CHUNK, info.file_size + 1 - total)):
                total += len(chunk)
                budget.take(len(chunk), info.filename)
                if total > info.file_size:
                    raise BenchError(f"{where}: member {info.filename!r} inflates beyond its declared {info.file_size} bytes")
                parts.append(chunk)
                if total == info.file_size:
                    if stream.read(1):  # also runs the CRC check at the end of the stream
                        raise BenchError(f"{where}: member {info.filename!r} inflates beyond its declared {info.file_size} bytes")
                    break
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError) as exc:
        raise BenchError(f"{where}: member {info.filename!r} cannot be read: {_first_line(exc)}") from None
    if total != info.file_size:
        raise BenchError(f"{where}: member {info.filename!r} holds {total} bytes, not the {info.file_size} it declares")
    return b"".join(parts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _open_zip(source: str | Path | BinaryIO, where: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
        raise BenchError(f"{where} is not a valid zip file: {_first_line(exc)}") from None


def _npy_array(payload: bytes, where: str, budget: _Budget) -> np.ndarray:
    """One `.npy` member: its header checked (version, size, plain numeric dtype, shape) before the data is taken."""
    stream = io.BytesIO(payload)
    try:
        major, _ = np.lib.format.read_magic(stream)
        if major not in (1, 2, 3):
            raise ValueError(f"unknown .npy version {major}")
        length_bytes = 2 if major == 1 else 4
        header_length = int.from_bytes(stream.read(length_bytes), "little")
        if header_length > MAX_NPY_HEADER:
            raise ValueError(f"header of {header_length} bytes")
        header = ast.literal_eval(stream.read(header_length).decode("latin1"))
        if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
            raise ValueError("malformed header")
        shape, fortran = header["shape"], header["fortran_order"]
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape) and len(shape) <= 8 and isinstance(fortran, bool)):
            raise ValueError(f"bad shape {shape!r}")
        dtype = np.dtype(header["descr"]) if isinstance(header["descr"], str) else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise BenchError(f"{where} is not a plain .npy array: {_first_line(exc)}") from None
    if dtype is None or dtype.hasobject or dtype.kind not in ARRAY_KINDS or dtype.fields is not None:
        raise BenchError(f"{where} has dtype {header['descr']!r}: object arrays are refused (bundles carry plain numbers only)")
    count = 1
    for n in shape:
        count *= n
    size = count * dtype.itemsize
    offset = stream.tell()
    if size != len(payload) - offset:
        raise BenchError(f"{where}: its header promises {size} bytes of data ({shape}, {dtype.str}), the member holds {len(payload) - offset}")
    array = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C").copy()


def read_npz(payload: bytes, where: str, budget: _Budget) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` member, parsed here with the same limits as the bundle (np.load is not used)."""
    with _open_zip(io.BytesIO(payload), where) as archive:
        infos = archive.infolist()
        _check_infos(infos, where, ("*.npy",), MAX_ARRAYS_PER_FILE)
        return {info.filename[:-4]: _npy_array(_read_member(archive, info, budget.left, budget, where), f"{where}:{info.filename}", budget)
                for info in infos}


def read_bundle(path: Path) -> Bundle:
    """Open, check the archive's structure, sizes and digests, validate the manifest, parse the arrays."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"bundle {path} not found; pass the .zip that `bench submit` wrote")
    if path.stat().st_size > MAX_BUNDLE_BYTES:
        raise BenchError(f"bundle {path} is {path.stat().st_size} bytes, over the limit of {MAX_BUNDLE_BYTES}; split the suite")
    budget = _Budget(MAX_UNPACKED_BYTES)
    where = f"bundle {path}"
    with _open_zip(path, where) as archive:
        infos = archive.infolist()
        _check_infos(infos, where, ("manifest.json", "*.npz"), MAX_MEMBERS)
        by_name = {info.filename: info for info in infos}
        if "manifest.json" not in by_name:
            raise BenchError(f"bundle {path} has no manifest.json")
        manifest = _manifest(_read_member(archive, by_name["manifest.json"], MAX_MANIFEST_BYTES, budget, where))
        listed = {entry.path: (run, kind) for run in manifest.runs for kind, entry in run.files.items()}
        extra = set(by_name) - set(listed) - {"manifest.json"}
        if extra:
            raise BenchError(f"bundle member {sorted(extra)[0]!r} is not listed in the manifest")
        arrays = {}
        for name, (run, kind) in listed.items():
            entry = run.files[kind]
            if name not in by_name:
                raise BenchError(f"bundle run {run.run_id}: file {name} ({kind}) is missing from the archive")
            payload = _read_member(archive, by_name[name], MAX_UNPACKED_BYTES, budget, where)
            if sha256(payload) != entry.sha256:
                raise BenchError(f"bundle run {run.run_id}: file {name} does not match its SHA-256 in the manifest (changed after submission)")
            arrays[name] = read_npz(payload, f"bundle file {name}", budget)
    return Bundle(manifest, arrays)


def _manifest(payload: bytes) -> Manifest:
    try:
        return Manifest.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        hint = " (this harness reads bundle schema 2; re-submit with it)" if where == "schema_version" else ""
        raise BenchError(f"bundle manifest: {where}: {first['msg']}{hint}") from None


def config_run_id(config: dict) -> str:
    """The run id a config hashes to (the same hash the engine uses)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
