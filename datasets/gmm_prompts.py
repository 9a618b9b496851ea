"""The exact analogue of text-to-image related vs unrelated negative prompts (paper §4.2).

A Gaussian mixture plays the text-to-image model: the full mixture is the empty prompt (`null`),
a positive prompt covers a set of modes (its exact conditional is `uncond`, as eps_p replaces the
unconditional model in §4.2), a *related* negative prompt is a mode inside that set (the egg of
"an English breakfast") and an *unrelated* one is a mode outside it ("the view of a skyline").
Every score and posterior is closed-form (datasets/gmm.py), so the ideal outcome is known: the
related arm should sample the positive set without the related mode, the unrelated arm should
sample the positive set unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from negguide.datasets.gmm import GaussianMixture

# A log-odds standing in for log(0): the unrelated mode has zero probability under the positive prompt.
NEVER = -700.0


def ring(modes: int, radius: float, std: float) -> GaussianMixture:
    """`modes` equal Gaussians evenly spaced on a circle (mode 0 on the positive x axis)."""
    angles = [2 * math.pi * i / modes for i in range(modes)]
    means = tuple((round(radius * math.cos(a), 12), round(radius * math.sin(a), 12)) for a in angles)
    return GaussianMixture(means=means, stds=(std,) * modes, weights=(1.0 / modes,) * modes)


@dataclass(frozen=True)
class PromptProblem:
    """A positive prompt (a set of modes), one related and one unrelated negative mode."""

    mixture: GaussianMixture
    positive: tuple[int, ...]
    related: int
    unrelated: int

    def __post_init__(self) -> None:
        if self.related not in self.positive:
            raise ValueError("the related negative must be a mode of the positive set")
        if self.unrelated in self.positive:
            raise ValueError("the unrelated negative must lie outside the positive set")

    @property
    def positive_mixture(self) -> GaussianMixture:
        return self.mixture.subset(list(self.positive))

    def negative(self, related: bool) -> GaussianMixture:
        """The negative prompt's model: the related or the unrelated mode alone."""
        return self.mixture.subset([self.related if related else self.unrelated])

    def target(self, related: bool) -> GaussianMixture:
        """The ideal outcome: the positive set without the related mode, or the positive set unchanged."""
        if not related:
            return self.positive_mixture
        return self.mixture.subset([m for m in self.positive if m != self.related])

    def posterior_logit(self, x: torch.Tensor, alpha_bar: float, related: bool) -> torch.Tensor:
        """Exact log-odds of the negative concept under the positive prompt, p_t(c-|x, c+)."""
        if not related:
            return torch.full((len(x),), NEVER, dtype=torch.float64, device=x.device)
        joint = self.mixture.component_log_joint(x, alpha_bar)
        others = [m for m in self.positive if m != self.related]
        return joint[:, self.related] - torch.logsumexp(joint[:, others], dim=1)

    def as_dict(self) -> dict:
        return {**self.mixture.as_dict(), "positive": list(self.positive), "related": self.related, "unrelated": self.unrelated}


# Six concepts on a ring; the positive prompt covers three neighbours, the related negative is the
# middle one of them, the unrelated negative sits opposite it.
RING6 = ring(6, radius=4.0, std=0.5)
PROBLEM = PromptProblem(RING6, positive=(0, 1, 2), related=1, unrelated=4)
