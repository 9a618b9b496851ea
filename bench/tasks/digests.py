"""Content digests of judges and reference data, recorded with every run (a protocol names them)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from negguide.metrics.fid import file_sha256


def json_digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def array_digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def folder_digest(folder: Path, pattern: str = "*") -> str:
    """Digest of a folder's files (names and contents); each file hashed once per process unless it changes."""
    files = sorted(f for f in Path(folder).glob(pattern) if f.is_file()) if Path(folder).is_dir() else []
    return json_digest([(f.name, file_sha256(f)[:16]) for f in files])
