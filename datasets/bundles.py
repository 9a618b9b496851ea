"""Model bundles: the networks behind a class-removal task, as a Denoiser of named predictions.

Two forms (paper §4.1): one class-conditional network with a null label, which gives the
unconditional and the to-forget prediction in one batched forward; or two networks, an
unconditional one and one trained only on the forbidden class (CIFAR-10 in the paper).

A class-conditional bundle may also carry a `NegationKernel`: predictions from a set of real
forbidden examples (the negation set of Kim et al. 2025), computed without the network.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Rows per forward on a CPU: the fastest size on 2 cores for the MNIST UNet, and the smallest whose
# outputs are bit-identical to one whole-batch forward (32 rows differ by ~1e-6): benchmarks/bench_mnist_speed.py.
CPU_MICRO_BATCH = 64


@dataclass(frozen=True)
class ForwardPlan:
    """How a bundle calls its network: rows per forward (None: all), and whether the predictions
    that share a network go through it as one stacked batch (pays on a GPU, costs on a CPU)."""

    micro_batch: int | None
    stack_predictions: bool


def forward_plan(device: torch.device) -> ForwardPlan:
    """The measured default for a device type."""
    if device.type == "cpu":
        return ForwardPlan(micro_batch=CPU_MICRO_BATCH, stack_predictions=False)
    return ForwardPlan(micro_batch=None, stack_predictions=True)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _timesteps(t: int, batch: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch,), t, dtype=torch.long, device=device)


def _eps_once(model: nn.Module, x: torch.Tensor, t: int, labels: torch.Tensor | None) -> torch.Tensor:
    timesteps = _timesteps(t, len(x), x.device)
    out = model(x, timesteps, class_labels=labels) if labels is not None else model(x, timesteps)
    return out.sample if hasattr(out, "sample") else out


def eps_prediction(model: nn.Module, x: torch.Tensor, t: int, labels: torch.Tensor | None = None, micro_batch: int | None = None) -> torch.Tensor:
    """eps prediction of a diffusers UNet2DModel (class labels optional), `micro_batch` rows per forward."""
    if micro_batch is None or len(x) <= micro_batch:
        return _eps_once(model, x, t, labels)
    parts = [_eps_once(model, x[i:i + micro_batch], t, None if labels is None else labels[i:i + micro_batch])
             for i in range(0, len(x), micro_batch)]
    return torch.cat(parts)


class NegationKernel:
    """Gaussian-kernel predictions from a negation set {x_n} (N examples) and a kept reference set {y_m} (M).

    With the variance-preserving forward process q_t(x_t | x0) = N(x_t; sqrt(abar) x0, (1 - abar) I) and the
    empirical distribution uniform over the N + M reference points, every quantity below is exact for that
    distribution (Kim et al. 2025, Eq. 6: the kernel estimate of the unsafe denoiser):

      k(x_t, x)        = exp(-|x_t - sqrt(abar) x|^2 / (2 (1 - abar)))             (the Gaussian normaliser cancels)
      w_n(x_t)         = k(x_t, x_n) / sum_n' k(x_t, x_n')                          (over the negation set)
      negation         = (x_t - sqrt(abar) sum_n w_n x_n) / sqrt(1 - abar)
                         the noise prediction of E[x0 | x_t, x0 in negation set]
      negation_logit   = log sum_n k(x_t, x_n) - log sum_m k(x_t, y_m)
                         = log P(x0 in negation | x_t) - log P(x0 not in negation | x_t) = log beta*(x_t) (Eq. 5)

    Sums are log-sum-exps in float64 (the |x_t|^2 term, common to every kernel, is dropped before them);
    both sets stay on the device they were given on. Cost per call: one [B, D] x [D, N + M] product.
    `negation_set` is the negation examples themselves, [B, N, *shape], the same on every row (an expanded view),
    for methods that run their own kernel (`safe-denoiser`, the authors' algorithm).
    """

    names = ("negation", "negation_logit", "negation_set")

    def __init__(self, negation: torch.Tensor, kept: torch.Tensor):
        self.examples = negation
        self.negation = negation.reshape(len(negation), -1).double()
        self.kept = kept.reshape(len(kept), -1).double()
        self._negation_sq = (self.negation**2).sum(1)
        self._kept_sq = (self.kept**2).sum(1)

    def _log_kernels(self, x: torch.Tensor, points: torch.Tensor, points_sq: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """log k(x_t, x) + |x_t|^2 / (2 (1 - abar)) for every pair: [B, len(points)]."""
        a, var = alpha_bar**0.5, 1.0 - alpha_bar
        return (2.0 * a * (x @ points.T) - alpha_bar * points_sq[None]) / (2.0 * var)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, step, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        unknown = set(names) - set(self.names)
        if unknown:
            raise KeyError(f"the negation kernel provides {', '.join(self.names)}, not {sorted(unknown)}")
        preds = {}
        if "negation_set" in names:
            preds["negation_set"] = self.examples.to(x.dtype).expand(len(x), *self.examples.shape)
            if set(names) == {"negation_set"}:
                return preds
        x64 = x.reshape(len(x), -1).double()
        log_neg = self._log_kernels(x64, self.negation, self._negation_sq, step.alpha_bar)
        if "negation" in names:
            x0 = torch.softmax(log_neg, dim=1) @ self.negation
            eps = (x64 - step.alpha_bar**0.5 * x0) / (1.0 - step.alpha_bar) ** 0.5
            preds["negation"] = eps.reshape(x.shape).to(x.dtype)
        if "negation_logit" in names:
            log_kept = self._log_kernels(x64, self.kept, self._kept_sq, step.alpha_bar)
            preds["negation_logit"] = (torch.logsumexp(log_neg, dim=1) - torch.logsumexp(log_kept, dim=1)).to(x.dtype)
        return {name: preds[name] for name in names}


class ConditionalBundle:
    """One class-conditional network: `uncond` is the null label, `neg` the removed class; with a
    `NegationKernel`, also its `negation` and `negation_logit` (no network evaluation)."""

    def __init__(self, model: nn.Module, null_label: int, removed: int, negation: NegationKernel | None = None,
                 plan: ForwardPlan | None = None):
        self.model, self.null_label, self.removed, self.negation = model, null_label, removed, negation
        self.plan = plan or forward_plan(_model_device(model))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, step, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        labels = {"uncond": self.null_label, "neg": self.removed}
        from_kernel = self.negation.names if self.negation is not None else ()
        unknown = set(names) - set(labels) - set(from_kernel)
        if unknown:
            raise KeyError(f"this model bundle provides {', '.join((*labels, *from_kernel))}, not {sorted(unknown)}")
        network = tuple(n for n in names if n in labels)
        kernel = tuple(n for n in names if n not in labels)
        preds = {}
        if network:
            preds.update(self._network(x, step.t, {n: labels[n] for n in network}))
        if kernel:
            preds.update(self.negation(x, step, kernel))
        return {name: preds[name] for name in names}

    def _network(self, x: torch.Tensor, t: int, labels: dict[str, int]) -> dict[str, torch.Tensor]:
        """One prediction per label: stacked into one batch (the inputs repeated) or one after the other."""
        batch, micro = len(x), self.plan.micro_batch
        label = lambda value, rows: torch.full((rows,), value, dtype=torch.long, device=x.device)  # noqa: E731
        if not self.plan.stack_predictions:
            return {name: eps_prediction(self.model, x, t, label(value, batch), micro) for name, value in labels.items()}
        stacked = torch.cat([label(value, batch) for value in labels.values()])
        eps = eps_prediction(self.model, x.repeat(len(labels), *([1] * (x.dim() - 1))), t, stacked, micro)
        return dict(zip(labels, eps.split(batch)))


class TwoNetworkBundle:
    """An unconditional network and a to-forget network (trained on the removed class only)."""

    def __init__(self, uncond: nn.Module, forget: nn.Module, plan: ForwardPlan | None = None):
        self.networks = {"uncond": uncond, "neg": forget}
        self.plan = plan or forward_plan(_model_device(uncond))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, step, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        unknown = set(names) - set(self.networks)
        if unknown:
            raise KeyError(f"this model bundle provides uncond and neg, not {sorted(unknown)}")
        return {name: eps_prediction(self.networks[name], x, step.t, micro_batch=self.plan.micro_batch) for name in names}
