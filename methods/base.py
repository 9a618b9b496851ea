"""The step protocol every guidance method implements (DESIGN.md, "The core loop").

A method never touches the model, the scheduler, Ray or the database: it sees the named
predictions of one step, the step's schedule constants (`Step`), and its own explicit per-sample
state. Every method can be restricted to a window of training timesteps [t_low, t_high]; outside
it the sampler takes the unguided prediction while the method's state keeps evolving.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from negguide.methods.errors import MethodError
from negguide.methods.schedule import Step

Predictions = dict[str, torch.Tensor]  # "uncond", "neg", ... -> [B, *shape]
State = dict[str, torch.Tensor]  # per-sample tensors, first dimension B
WINDOW_DEFAULTS = {"t_low": 0, "t_high": 999}  # the whole chain of a T = 1000 schedule
_NOTHING = object()


@dataclass(frozen=True)
class Params:
    """Hyperparameters of a method: `scale` (the guidance scale of every method) and the time window."""

    added_later: ClassVar[dict[str, Any]] = {}  # parameter -> default left out of run configs (ids made before it stand)
    # parameter -> the sampler setting it takes when the command line does not set it (where the sampler has that setting)
    follows_sampler: ClassVar[dict[str, str]] = {}

    scale: float = 1.0
    t_low: int = WINDOW_DEFAULTS["t_low"]  # guidance only for training timesteps t_low <= t <= t_high
    t_high: int = WINDOW_DEFAULTS["t_high"]

    def validate(self) -> None:
        """Raise ValueError naming the bad parameter; subclasses extend."""
        if not scale_is_finite(self.scale):
            raise ValueError(f"scale must be a finite number, got {self.scale}")
        if not 0 <= self.t_low <= self.t_high:
            raise ValueError(f"need 0 <= t_low <= t_high, got t_low={self.t_low}, t_high={self.t_high}")


def scale_is_finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


class GuidanceMethod:
    """Base class: declare `needs` and `Params`, implement `guide` (and `observe` if stateful)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""  # the paper and the reference code
    needs: ClassVar[tuple[str, ...]] = ("uncond", "neg")
    Params: ClassVar[type[Params]] = Params
    window_in_config: ClassVar[bool] = False  # True where the window is the method's own idea (np-interval)

    def __init__(self, params: Params | None = None):
        self.params = params if params is not None else self.Params()
        self.params.validate()

    def init_state(self, batch: int, like: torch.Tensor) -> State:
        """Per-sample state before the first step (`like` is x_T, for device and dtype)."""
        return {}

    def guide(self, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
        """The guided noise prediction for this step, and the state after it."""
        raise NotImplementedError

    def observe(self, step: Step, x: torch.Tensor, x_prev: torch.Tensor, preds: Predictions, state: State) -> State:
        """Update state once x_prev is known (DNG's posterior lives here)."""
        return state

    def prepare_models(self, denoiser: object) -> None:
        """Before a draw: a method that acts inside the network configures the task's denoiser here (NAG)."""

    def cleanup_models(self, denoiser: object) -> None:
        """After a draw, failed or not: undo `prepare_models` (diffusers' guiders have the same pair of hooks)."""

    def trace(self, state: State) -> dict[str, torch.Tensor]:
        """Per-sample scalars recorded each step; by default the state's `guidance_scale`."""
        return {key: state[key] for key in ("guidance_scale", "posterior") if key in state}

    def active(self, step: Step) -> bool:
        """Whether guidance is on at this step (the time window)."""
        return self.params.t_low <= step.t <= self.params.t_high

    def config(self) -> dict[str, Any]:
        """Name and parameters; the window, and parameters added after runs were stored (`Params.added_later`),
        are listed only where they differ from their defaults, so those runs keep their ids."""
        params = dataclasses.asdict(self.params)
        quiet = {**(WINDOW_DEFAULTS if not self.window_in_config else {}), **self.Params.added_later}
        return {"method": self.name, "params": {k: v for k, v in params.items() if quiet.get(k, _NOTHING) != v}}


# ---- what the sampler calls: the same three hooks, windowed and checked (one name per hook) ---------


def init_state(method: GuidanceMethod, batch: int, like: torch.Tensor) -> State:
    """`method.init_state`, with an exception inside it named as the method's."""
    with _blame(method, "init_state", None):
        return method.init_state(batch, like)


def guide(method: GuidanceMethod, step: Step, preds: Predictions, state: State) -> tuple[torch.Tensor, State]:
    """`method.guide` inside its window, the unguided prediction outside it; the output is checked here."""
    with _blame(method, "guide", step):
        eps, state = method.guide(step, preds, state)
    check_output(method.name, step, eps, preds["uncond"])
    if not method.active(step):
        eps = preds["uncond"]
        if "guidance_scale" in state:
            state = {**state, "guidance_scale": torch.zeros_like(state["guidance_scale"])}
    return eps, state


def observe(method: GuidanceMethod, step: Step, x: torch.Tensor, x_prev: torch.Tensor, preds: Predictions, state: State) -> State:
    """`method.observe` once x_prev is known."""
    with _blame(method, "observe", step):
        return method.observe(step, x, x_prev, preds, state)


class _blame:
    """Turn an exception raised inside a method into a MethodError naming the method and the step."""

    def __init__(self, method: GuidanceMethod, hook: str, step: Step | None):
        self.method, self.hook, self.step = method, hook, step

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, tb) -> bool:
        if error is None or isinstance(error, (MethodError, KeyboardInterrupt)) or not isinstance(error, Exception):
            return False
        where = f"step {self.step.index} (t={self.step.t})" if self.step is not None else "the start"
        source = _defining_file(type(self.method))
        raise MethodError(f"method {self.method.name!r} raised {type(error).__name__} in {self.hook} at {where}: {error}",
                          method_file=source, frames=_frames_in(tb, source)) from error


def _defining_file(cls: type) -> str | None:
    import inspect

    try:
        return inspect.getsourcefile(cls)
    except TypeError:
        return None


def _frames_in(tb, source: str | None) -> str:
    """The traceback entries that lie in the method's own file, formatted like Python's."""
    import os
    import traceback

    home = os.path.realpath(source) if source else None
    frames = [f for f in traceback.extract_tb(tb) if home and os.path.realpath(f.filename) == home]
    return "".join(traceback.format_list(frames))


def check_output(name: str, step: Step, eps: torch.Tensor, like: torch.Tensor) -> None:
    """A guided prediction must match the unguided one in shape, dtype and device, and be finite."""
    where = f"at step {step.index} (t={step.t})"
    if not isinstance(eps, torch.Tensor):
        raise MethodError(f"method {name!r} returned {type(eps).__name__} instead of a tensor {where}; guide must return (eps, state)")
    for what, got, want in (("shape", tuple(eps.shape), tuple(like.shape)), ("dtype", eps.dtype, like.dtype), ("device", eps.device, like.device)):
        if got != want:
            raise MethodError(f"method {name!r} returned a prediction of {what} {got} {where}, expected {want} like preds['uncond']")
    if not torch.isfinite(eps).all():
        raise MethodError(f"method {name!r} produced NaN or inf {where}; lower the scale or check the parameters")


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a [B] tensor so it broadcasts against [B, *shape]."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def constant(batch: int, value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full((batch,), float(value), dtype=like.dtype, device=like.device)
