"""Gaussian mixtures whose diffused scores and posteriors are closed-form (paper Appendix B).

Under the variance-preserving forward process, mode N(mu_i, s_i^2 I) becomes
N(sqrt(abar_t) mu_i, (1 - abar_t + abar_t s_i^2) I), so every score, eps prediction and the
posterior of any set of modes is exact at every t.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class GaussianMixture:
    """Isotropic Gaussian mixture in d dimensions: means [K, d], stds [K], weights [K]."""

    means: tuple[tuple[float, ...], ...]
    stds: tuple[float, ...]
    weights: tuple[float, ...]

    @property
    def dim(self) -> int:
        return len(self.means[0])

    def subset(self, modes: list[int]) -> "GaussianMixture":
        """The mixture of `modes` alone, weights renormalised."""
        total = sum(self.weights[i] for i in modes)
        return GaussianMixture(tuple(self.means[i] for i in modes), tuple(self.stds[i] for i in modes), tuple(self.weights[i] / total for i in modes))

    def _arrays(self, alpha_bar: float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        means = torch.tensor(self.means, dtype=torch.float64, device=like.device) * alpha_bar**0.5
        variances = 1.0 - alpha_bar + alpha_bar * torch.tensor(self.stds, dtype=torch.float64, device=like.device) ** 2
        log_weights = torch.log(torch.tensor(self.weights, dtype=torch.float64, device=like.device))
        return means, variances, log_weights

    def component_log_joint(self, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """log(w_i N(x; m_i(t), v_i(t) I)) for every mode: [B, K]."""
        means, variances, log_weights = self._arrays(alpha_bar, x)
        x64 = x.reshape(len(x), -1).double()
        sq = ((x64[:, None, :] - means[None]) ** 2).sum(-1)
        return log_weights - 0.5 * sq / variances - 0.5 * self.dim * torch.log(2 * torch.pi * variances)

    def log_density(self, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        return torch.logsumexp(self.component_log_joint(x, alpha_bar), dim=1)

    def score(self, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """grad_x log p_t(x): responsibility-weighted mode scores, [B, d]."""
        means, variances, _ = self._arrays(alpha_bar, x)
        resp = torch.softmax(self.component_log_joint(x, alpha_bar), dim=1)
        x64 = x.reshape(len(x), -1).double()
        mode_scores = -(x64[:, None, :] - means[None]) / variances[None, :, None]
        return (resp[:, :, None] * mode_scores).sum(1)

    def eps(self, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """The exact noise prediction eps = -sqrt(1 - abar) * score."""
        return (-((1.0 - alpha_bar) ** 0.5) * self.score(x, alpha_bar)).reshape(x.shape).to(x.dtype)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Most probable mode of each clean sample (t = 0)."""
        return self.component_log_joint(x, 1.0).argmax(1)

    def sample(self, n: int, seed: int) -> np.ndarray:
        """n exact draws from the clean mixture, [n, d]."""
        rng = np.random.default_rng(seed)
        modes = rng.choice(len(self.weights), size=n, p=np.asarray(self.weights))
        means, stds = np.asarray(self.means), np.asarray(self.stds)
        return means[modes] + stds[modes, None] * rng.standard_normal((n, self.dim))

    def projected_cdf(self, points: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """CDF of the clean mixture projected on a unit direction, at `points`."""
        from scipy.special import ndtr  # the standard normal CDF (scipy.stats.norm.cdf without its per-call overhead)

        projected_means = np.asarray(self.means) @ direction
        cdf = ndtr((points[:, None] - projected_means[None]) / np.asarray(self.stds)[None])
        return cdf @ np.asarray(self.weights)

    def as_dict(self) -> dict:
        return {"means": [list(m) for m in self.means], "stds": list(self.stds), "weights": list(self.weights)}


@dataclass(frozen=True)
class RemovalProblem:
    """The unconditional mixture, the to-forget mode and the to-remember rest."""

    mixture: GaussianMixture
    removed: int

    @property
    def forget(self) -> GaussianMixture:
        return self.mixture.subset([self.removed])

    @property
    def remember(self) -> GaussianMixture:
        return self.mixture.subset([i for i in range(len(self.mixture.weights)) if i != self.removed])

    def posterior_logit(self, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """log p_t(c-|x) - log(1 - p_t(c-|x)), exact and stable (paper Eq. 16)."""
        joint = self.mixture.component_log_joint(x, alpha_bar)
        others = torch.cat([joint[:, : self.removed], joint[:, self.removed + 1 :]], dim=1)
        return joint[:, self.removed] - torch.logsumexp(others, dim=1)


GMM1D = GaussianMixture(means=((-3.0,), (0.0,), (3.0,)), stds=(0.5, 0.5, 0.5), weights=(1 / 3, 1 / 3, 1 / 3))
GMM2D = GaussianMixture(
    means=((0.0, 0.0), (3.0, 3.0), (-3.0, 3.0), (-3.0, -3.0), (3.0, -3.0)),
    stds=(0.5, 0.5, 0.5, 0.5, 0.5),
    weights=(0.2, 0.2, 0.2, 0.2, 0.2),
)


class ExactDenoiser:
    """Every prediction a method may ask for on a removal problem, in closed form.

    `negation` and `negation_logit` are the negation-set predictions of safe-denoiser (Kim et al. 2025):
    the eps of E[x0 | x_t, x0 in the negation set] and log P(x0 in it | x_t) - log P(x0 not in it | x_t).
    Here the negation "set" is the exact forbidden mode, so they are `neg` and `posterior_logit` exactly.
    `negation_set` is a finite set for the authors' algorithm (`safe-denoiser`, a kernel over examples): 515 draws
    (their nudity set's size) from the forbidden mode, seed 0, as [B, 515, dim], the same on every row (a view).
    """

    NEGATION_SET_SIZE, NEGATION_SET_SEED = 515, 0

    def __init__(self, problem: RemovalProblem):
        self.problem = problem
        self._eps_sources = {"uncond": problem.mixture, "neg": problem.forget, "remember": problem.remember, "negation": problem.forget}
        self.negation_set = torch.from_numpy(problem.forget.sample(self.NEGATION_SET_SIZE, self.NEGATION_SET_SEED))

    def __call__(self, x: torch.Tensor, step, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        preds = {}
        for name in names:
            if name == "negation_set":
                preds[name] = self.negation_set.to(x.device, x.dtype).expand(len(x), *self.negation_set.shape)
            elif name in ("posterior_logit", "negation_logit"):
                preds[name] = self.problem.posterior_logit(x, step.alpha_bar).to(x.dtype)
            elif name in self._eps_sources:
                preds[name] = self._eps_sources[name].eps(x, step.alpha_bar)
            else:
                raise KeyError(f"exact Gaussian-mixture tasks provide {sorted(self._eps_sources) + ['negation_logit', 'negation_set', 'posterior_logit']}, not {name!r}")
        return preds

    def exact_posterior(self, x: torch.Tensor, step) -> dict[str, torch.Tensor]:
        """The true p_t(c-|x_t) at the start of a step, traced beside a method's estimate."""
        return {"posterior_exact": torch.sigmoid(self.problem.posterior_logit(x, step.alpha_bar))}
