"""Content digests of judges and reference data, recorded with every run (a protocol names them)."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np


def json_digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def array_digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def folder_digest(folder: Path, pattern: str = "*") -> str:
    """Digest of a folder's files (names and contents); cached by path, size and modification time."""
    files = sorted(f for f in Path(folder).glob(pattern) if f.is_file()) if Path(folder).is_dir() else []
    return json_digest([(f.name, _file_digest(str(f), f.stat().st_size, f.stat().st_mtime_ns)) for f in files])


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
