"""Model bundles: the networks behind a class-removal task, as a Denoiser of named predictions.

Two forms (paper §4.1): one class-conditional network with a null label, which gives the
unconditional and the to-forget prediction in one batched forward; or two networks, an
unconditional one and one trained only on the forbidden class (CIFAR-10 in the paper).
"""
from __future__ import annotations

import torch
from torch import nn


def _timesteps(t: int, batch: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch,), t, dtype=torch.long, device=device)


def _eps(model: nn.Module, x: torch.Tensor, t: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """eps prediction of a diffusers UNet2DModel (class labels optional)."""
    out = model(x, _timesteps(t, len(x), x.device), class_labels=labels) if labels is not None else model(x, _timesteps(t, len(x), x.device))
    return out.sample if hasattr(out, "sample") else out


class ConditionalBundle:
    """One class-conditional network: `uncond` is the null label, `neg` the removed class."""

    def __init__(self, model: nn.Module, null_label: int, removed: int):
        self.model, self.null_label, self.removed = model, null_label, removed

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, step, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        labels = {"uncond": self.null_label, "neg": self.removed}
        unknown = set(names) - set(labels)
        if unknown:
            raise KeyError(f"this model bundle provides uncond and neg, not {sorted(unknown)}")
        # All requested predictions in one batched forward: the inputs repeated, one label per copy.
        batch = len(x)
        label_tensor = torch.cat([torch.full((batch,), labels[n], dtype=torch.long, device=x.device) for n in names])
        eps = _eps(self.model, x.repeat(len(names), *([1] * (x.dim() - 1))), step.t, label_tensor)
        return dict(zip(names, eps.split(batch)))


class TwoNetworkBundle:
    """An unconditional network and a to-forget network (trained on the removed class only)."""

    def __init__(self, uncond: nn.Module, forget: nn.Module):
        self.networks = {"uncond": uncond, "neg": forget}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, step, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        unknown = set(names) - set(self.networks)
        if unknown:
            raise KeyError(f"this model bundle provides uncond and neg, not {sorted(unknown)}")
        return {name: _eps(self.networks[name], x, step.t) for name in names}
