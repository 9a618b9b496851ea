"""Files beside the store: atomic npz writes, shard files, sample grids."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from negguide.atomic import atomic_path, write_bytes_atomic  # noqa: F401 (write_bytes_atomic: re-exported for the store's callers)


def write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """An npz file written atomically (a file handle: np.savez would add `.npz` to a temporary name)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        np.savez(out, **arrays)


def read_npz(path: Path) -> dict[str, np.ndarray] | None:
    """All arrays of an npz file, or None when it is truncated or corrupt."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
        return None


def image_grid_png(images: np.ndarray, columns: int = 16, limit: int = 256) -> bytes:
    """A PNG grid of uint8 images N x C x H x W (the first `limit`), 2-pixel gaps."""
    from PIL import Image

    images = images[:limit]
    n, channels, height, width = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (height + 2), columns * (width + 2), channels), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (height + 2): r * (height + 2) + height, c * (width + 2): c * (width + 2) + width] = image.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(canvas[..., 0] if channels == 1 else canvas).save(buffer, format="PNG")
    return buffer.getvalue()
