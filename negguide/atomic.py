"""Atomic file writes, once for every folder: readers never see half a file, a failed write leaves none."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """A temporary file beside `dest` to write in the block; synced and renamed onto `dest` when the block
    succeeds, removed when it fails (the same folder, so the rename is atomic)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=dest.parent, prefix=f"{dest.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(dest: Path, payload: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(payload)
