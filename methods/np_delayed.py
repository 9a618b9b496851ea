"""Delayed Negative Prompting (Ban et al. 2024): NP switched on only after a critical step.

    eps = eps_u                              for t > t_critical  (the noisiest part of the chain)
    eps = eps_u - scale * (eps_n - eps_u)    for t <= t_critical (paper Eq. 6, i.e. `np`)

Ban, Wang, Zhou, Cheng, Gong, Hsieh, "Understanding the impact of negative prompts: when and how
do they take effect?", ECCV 2024 (arXiv:2406.02965). They find a *delayed effect*: the negative
prompt only acts once the positive prompt has rendered the corresponding content, and applied
earlier it can even *induce* the concept it should remove ("reverse activation"). Their fix is to
apply the negative prompt only after a critical step; they report the critical step at about step
5 of 30 sampling steps for objects (nouns) and later, about step 10 of 30, for attributes
(adjectives). The sampler is NP with a later start, written here from that description.

The critical point is a training timestep, `t_critical = t_high` of the base window (guidance on
for t_low <= t <= t_high). Its default T_CRITICAL = 800 (of T = 1000) is the paper's object setting
of 5 unguided steps out of 30: Stable Diffusion's 30-step DDIM chain (timesteps 958, 925, 892, 859,
826, 793, ...) has exactly its first 5 steps above 800. On this benchmark's evenly respaced chains
the same 800 leaves the first fifth unguided (10 of 50 steps, 20 of 100, 199 of 1000). The
attribute setting, 10 unguided steps of 30, is t_high = 650.

Together with the base window this method also covers `np-interval` (Kynkaanniemi et al. 2024,
used negatively): np-delayed with t_low > 0 is NP on [t_low, t_critical], and np-interval with
t_high = T_CRITICAL is np-delayed; the two differ only in the default of t_high. The window is
always part of the run's config (`window_in_config`), since it is the method's point.
"""
from __future__ import annotations

from dataclasses import dataclass

from negguide.methods.base import Params
from negguide.methods.negative_prompting import NegativePrompting

T_CRITICAL = 800  # training timestep after which (t <= T_CRITICAL) the negative prompt acts


@dataclass(frozen=True)
class DelayedNPParams(Params):
    t_high: int = T_CRITICAL  # t_critical: NP for t_low <= t <= t_high, unguided above


class DelayedNegativePrompting(NegativePrompting):
    name = "np-delayed"
    reference = "Ban et al. 2024 (ECCV), Understanding the impact of negative prompts (arXiv:2406.02965): NP after a critical step"
    summary = "Negative Prompting switched on after a critical step (t <= t_critical = t_high, default 800)"
    Params = DelayedNPParams
    window_in_config = True
