"""Paired arms, shared by the text-to-image tasks and their exact analogue (gmm2d-prompts).

Sample id i is

    arm     a = i % 3          0 unguided reference, 1 related negative, 2 unrelated negative
    prompt  p = (i // 3) % P   which triplet of the prompt set
    replica k = i // (3 P)

and the three arms of one (prompt, replica) share the noise key i // 3: the sampler draws the same
initial and per-step noise for them, so each guided image has its unguided twin "at the same seed".
On reference rows `finalize` discards the method's output and takes the plain positive prediction
(with CFG), so the reference is unguided whatever the method does. Any prefix of ids is made of
whole triples (metrics use the complete ones), and prompts rotate fastest.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from negguide.methods.base import Predictions, per_sample
from negguide.methods.errors import BenchError
from negguide.methods.schedule import Step
from negguide.metrics.base import statistic
from negguide.metrics.intervals import Statistic

ARMS = ("reference", "related", "unrelated")
REFERENCE, RELATED, UNRELATED = 0, 1, 2


@dataclass(frozen=True)
class PairedLayout:
    """Sample id -> (replica, prompt, arm); the three arms of one (replica, prompt) share a noise key."""

    prompts: int = 1

    def arm(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64) % 3

    def prompt(self, ids: np.ndarray) -> np.ndarray:
        return (np.asarray(ids, dtype=np.int64) // 3) % self.prompts

    def noise_keys(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64) // 3

    def triples(self, n: int) -> np.ndarray:
        """Ids of the complete triples among samples 0..n-1: [T, 3] as (reference, related, unrelated)."""
        return np.arange(n // 3, dtype=np.int64)[:, None] * 3 + np.arange(3)[None, :]

    def rows(self, per_prompt: int) -> int:
        """Samples to draw for `per_prompt` images per prompt and arm."""
        return 3 * self.prompts * per_prompt


@dataclass(frozen=True)
class PairedRows:
    """The sample ids of one batch, with what each row is: its prompt and arm."""

    ids: np.ndarray
    layout: PairedLayout

    @property
    def prompt(self) -> np.ndarray:
        return self.layout.prompt(self.ids)

    @property
    def arm(self) -> np.ndarray:
        return self.layout.arm(self.ids)

    def where_arm(self, arm: int, like: torch.Tensor) -> torch.Tensor:
        """A [B, 1, ...] mask of the rows of `arm`, broadcastable against `like`."""
        return per_sample(torch.as_tensor(self.arm == arm, device=like.device), like)

    def check_pairing(self, x: torch.Tensor, step: Step) -> None:
        """At the first step, rows sharing a noise key must start from the same x_T."""
        if step.index != 0:
            return
        _, first, inverse = np.unique(self.layout.noise_keys(self.ids), return_index=True, return_inverse=True)
        twins = torch.as_tensor(first[inverse], device=x.device)
        if not torch.equal(x, x[twins]):
            raise BenchError("paired arms did not start from the same noise: the sampler must draw noise by "
                             "the conditioning's noise_keys (docs/text-to-image.md, 'Harness hooks')")

    def finalize(self, guidance: float, eps: torch.Tensor, preds: Predictions) -> torch.Tensor:
        """Positive CFG around the method's output; reference rows get plain CFG (no negative guidance)."""
        eps = torch.where(self.where_arm(REFERENCE, eps), preds["uncond"], eps)
        if guidance == 1.0:
            return eps
        return preds["null"] + guidance * (eps - preds["null"])


def guidance_statistics(traces: dict[str, np.ndarray], triples: np.ndarray) -> list[Statistic]:
    """guidance_related / guidance_unrelated: the traced guidance scale, averaged over steps and the arm's samples."""
    if "guidance_scale" not in traces:
        return []
    scale = traces["guidance_scale"]
    return [statistic(name, trace=scale, units=triples[:, arm]) for name, arm in (("guidance_related", RELATED), ("guidance_unrelated", UNRELATED))]
