"""An example user method: Negative Prompting whose scale fades out as the image forms.

Run it without installing anything:

    bench run --method examples/decaying_np.py:DecayingNP --task gmm1d-remove-1 --param scale=2

or ship it as a plugin: in your package's pyproject.toml

    [project.entry-points."negguide.methods"]
    decaying-np = "your_package.module:DecayingNP"
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from negguide.methods import GuidanceMethod, Params, Predictions, State, Step, constant


@dataclass(frozen=True)
class DecayingParams(Params):
    scale: float = 1.0
    power: float = 1.0  # scale * (1 - alpha_bar_t) ** power: strong early, zero at the end

    def validate(self) -> None:
        super().validate()
        if self.power < 0:
            raise ValueError(f"power must be >= 0, got {self.power}")


class DecayingNP(GuidanceMethod):
    name = "decaying-np"
    summary = "Negative Prompting with a scale that decays with the noise level"
    Params = DecayingParams

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        eps_u, eps_n = preds["uncond"], preds["neg"]
        scale = self.params.scale * (1.0 - step.alpha_bar) ** self.params.power
        return eps_u - scale * (eps_n - eps_u), {"guidance_scale": constant(len(eps_u), scale, eps_u)}
