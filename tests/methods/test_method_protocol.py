"""The sampler-facing protocol of negguide.methods.base: the time window, output checks, and blame.

- `step` restricts every method to training timesteps t_low <= t <= t_high: outside, the unguided
  prediction preds["uncond"] is returned and `guidance_scale` is traced as 0, while the state evolves
  exactly as without a window.
- `check_output` refuses a prediction of the wrong shape, dtype or device, a non-tensor, NaN or inf,
  with a MethodError naming the method and `step K (t=...)`.
- An exception inside a method's hook becomes a MethodError naming the method, the hook and the step,
  whose `.frames` hold the traceback lines of the method's own file.
"""
from __future__ import annotations

import pickle
import textwrap

import pytest
import torch

from negguide.methods import GuidanceMethod, MethodError, Schedule, load_method, method_class
from negguide.methods.base import check_output
from negguide.methods.base import guide, init_state, observe

CHAIN = Schedule().steps(50)
BUILTINS = ["none", "np", "np-interval", "sld", "sld-sd", "dng", "dng-exact", "cfg-remember"]
T_LOW, T_HIGH = 326, 714  # both are timesteps of the 50-step chain (steps 33 and 14)


def _inputs(method, shape, seed: int):
    """Per step: predictions for every need, and the x / x_prev pair given to `update` (independent of eps)."""
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(len(CHAIN) + 1)]
    out = []
    for step in CHAIN:
        preds = {}
        for need in method.needs:
            if need == "posterior_logit":
                preds[need] = 3.0 * torch.randn((shape[0],), generator=gen, dtype=torch.float64)
            else:
                preds[need] = torch.randn(shape, generator=gen, dtype=torch.float64)
        out.append((step, preds, xs[step.index], xs[step.index + 1]))
    return xs[0], out


@pytest.mark.parametrize("shape", [(3, 1, 4, 4), (4, 2)])
@pytest.mark.parametrize("name", BUILTINS)
def test_window_is_unguided_outside_method_inside_and_state_keeps_evolving(name, shape):
    whole = load_method(name, {})
    windowed = load_method(name, {"t_low": T_LOW, "t_high": T_HIGH})
    x0, inputs = _inputs(whole, shape, seed=71)
    s_whole, s_win = init_state(whole, shape[0], x0), init_state(windowed, shape[0], x0)
    counts = {"inside": 0, "outside": 0}
    for step, preds, x, x_prev in inputs:
        e_whole, s_whole = guide(whole, step, preds, s_whole)
        e_win, s_win = guide(windowed, step, preds, s_win)
        inside = T_LOW <= step.t <= T_HIGH
        counts["inside" if inside else "outside"] += 1
        assert set(s_win) == set(s_whole)
        if inside:
            assert torch.equal(e_win, e_whole)
        else:
            assert torch.equal(e_win, preds["uncond"])
        for key in s_whole:
            if key == "guidance_scale" and not inside:
                assert torch.equal(s_win[key], torch.zeros_like(s_whole[key]))
            else:
                assert torch.equal(s_win[key], s_whole[key]), (step.index, key)
        s_whole = observe(whole, step, x, x_prev, preds, s_whole)
        s_win = observe(windowed, step, x, x_prev, preds, s_win)
        for key in s_whole:  # after update, the state carried to the next step
            if key != "guidance_scale":
                assert torch.equal(s_win[key], s_whole[key]), (step.index, key)
    assert counts == {"inside": 20, "outside": 30}


def test_window_bounds_are_validated():
    from negguide.methods import BenchError

    with pytest.raises(BenchError, match="t_low <= t_high"):
        load_method("np", {"t_low": 500, "t_high": 100})


# ---- check_output ------------------------------------------------------------------------------

class Returns(GuidanceMethod):
    """Returns whatever `make(eps_u)` gives, from step index 3 on."""

    name = "returns-bad"
    needs = ("uncond",)
    make = staticmethod(lambda eps_u: eps_u)

    def guide(self, step, preds, state):
        eps_u = preds["uncond"]
        return (type(self).make(eps_u) if step.index >= 3 else eps_u), state


BAD = {
    "shape": (lambda e: e[:, :1], r"shape \(2, 1\)"),
    "batch": (lambda e: e[:1], r"shape \(1, 2\)"),
    "dtype": (lambda e: e.float(), r"dtype torch\.float32"),
    "device": (lambda e: torch.empty_like(e, device="meta"), r"device meta"),
    "nan": (lambda e: torch.where(torch.arange(e.numel()).reshape(e.shape) == 1, float("nan"), e), r"NaN or inf"),
    "inf": (lambda e: e * float("inf"), r"NaN or inf"),
    "not a tensor": (lambda e: e.numpy(), r"returned ndarray instead of a tensor"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_outputs_raise_method_error_naming_method_and_step(kind):
    make, detail = BAD[kind]
    method = type("BadMethod", (Returns,), {"make": staticmethod(make)})()
    eps_u = torch.randn((2, 2), generator=torch.Generator().manual_seed(72), dtype=torch.float64)
    for step in CHAIN[:3]:
        guide(method, step, {"uncond": eps_u}, {})  # fine before step 3
    with pytest.raises(MethodError, match=rf"method 'returns-bad' .*{detail}") as info:
        guide(method, CHAIN[3], {"uncond": eps_u}, {})
    assert "step 3 (t=938)" in str(info.value)


def test_check_output_accepts_a_matching_prediction():
    like = torch.zeros((2, 1, 4, 4), dtype=torch.float64)
    check_output("x", CHAIN[0], like.clone(), like)


def test_bad_output_is_refused_outside_the_window_too():
    """The check runs before the window replaces the prediction: a broken method fails wherever it is."""
    cls = type("BadWindowed", (Returns,), {"make": staticmethod(lambda e: e.float())})
    method = cls(cls.Params(t_low=0, t_high=10))
    eps_u = torch.zeros((2, 2), dtype=torch.float64)
    with pytest.raises(MethodError, match=r"at step 3 \(t=938\)"):
        guide(method, CHAIN[3], {"uncond": eps_u}, {})


# ---- blame -------------------------------------------------------------------------------------

USER_METHOD = textwrap.dedent('''\
    import torch
    from negguide.methods import GuidanceMethod


    def helper(x):
        return x.reshape(-1, 7)  # line 6: fails for 16 elements per row


    class Fragile(GuidanceMethod):
        name = "fragile"
        needs = ("uncond", "neg")

        def guide(self, step, preds, state):
            if step.index == 2:
                raise ValueError("boom at two")  # line 15
            if step.index == 4:
                return helper(preds["uncond"]), state  # line 17
            return preds["uncond"], state

        def observe(self, step, x, x_prev, preds, state):
            if step.index == 5:
                return {"n": state["missing"]}  # line 22
            return state


    class FragileStart(Fragile):
        name = "fragile-start"

        def init_state(self, batch, like):
            return {"n": 1 / 0}  # line 30
''')


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_method.py"
    path.write_text(USER_METHOD)
    return path


def _preds():
    gen = torch.Generator().manual_seed(73)
    return {k: torch.randn((2, 1, 4, 4), generator=gen, dtype=torch.float64) for k in ("uncond", "neg")}


def test_exception_in_guide_names_method_step_and_user_line(user_file):
    method = method_class(f"{user_file}:Fragile")()
    preds = _preds()
    state = init_state(method, 2, preds["uncond"])
    guide(method, CHAIN[1], preds, state)
    with pytest.raises(MethodError) as info:
        guide(method, CHAIN[2], preds, state)
    err = info.value
    assert "method 'fragile' raised ValueError in guide at step 2 (t=958): boom at two" in str(err)
    assert isinstance(err.__cause__, ValueError)
    assert err.method_file is not None and err.method_file.endswith("my_method.py")
    assert f'File "{user_file}", line 15, in guide' in err.frames
    assert 'raise ValueError("boom at two")' in err.frames
    assert "base.py" not in err.frames  # only the user's own file
    # The frames survive pickling (the trip back from a Ray worker).
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.frames == err.frames and again.method_file == err.method_file


def test_exception_in_a_helper_lists_both_user_lines(user_file):
    method = method_class(f"{user_file}:Fragile")()
    with pytest.raises(MethodError, match=r"method 'fragile' raised RuntimeError in guide at step 4 \(t=917\)") as info:
        guide(method, CHAIN[4], _preds(), {})
    frames = info.value.frames
    assert f'File "{user_file}", line 17, in guide' in frames
    assert f'File "{user_file}", line 6, in helper' in frames


def test_exception_in_observe_and_init_state(user_file):
    method = method_class(f"{user_file}:Fragile")()
    preds = _preds()
    with pytest.raises(MethodError, match=r"method 'fragile' raised KeyError in observe at step 5 \(t=897\)") as info:
        observe(method, CHAIN[5], preds["uncond"], preds["uncond"], preds, {})
    assert f'File "{user_file}", line 22, in observe' in info.value.frames
    start = method_class(f"{user_file}:FragileStart")()
    with pytest.raises(MethodError, match=r"method 'fragile-start' raised ZeroDivisionError in init_state at the start") as info:
        init_state(start, 2, preds["uncond"])
    assert f'File "{user_file}", line 30, in init_state' in info.value.frames


def test_method_error_inside_a_method_is_not_rewrapped():
    class Raises(GuidanceMethod):
        name = "raises-method-error"
        needs = ("uncond",)

        def guide(self, step, preds, state):
            raise MethodError("already explained", frames="F")

    with pytest.raises(MethodError) as info:
        guide(Raises(), CHAIN[0], {"uncond": torch.zeros(1, 2, dtype=torch.float64)}, {})
    assert str(info.value) == "already explained" and info.value.frames == "F"
