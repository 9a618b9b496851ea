"""docs/python-api.md runs as written, and what it claims holds.

Its python blocks run in order in one namespace (a reader's session): the plain loop on the exact 2D
mixture, then the diffusers pipeline on the tiny random-weight Stable Diffusion that the text-to-image
tests build (tests/tasks/test_task_t2i.py), named by BENCH_SD_MODEL as the page says. Then the checks:
the plain loop reproduces the harness's `sample()`, DNG's posterior moves and sets its scale, and the
pipeline adapter is the plain pipeline at scale 0 and changes the image otherwise.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "python-api.md"
SAME = 1e-6  # "the same samples / images": float32 rounding at most (measured: 0.0, bit for bit)
CHANGED = 1e-3  # "the image changed": pixel values in [0, 1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def build_tiny_sd(root: Path) -> Path:
    """The tiny Stable Diffusion of the text-to-image tests (one definition, loaded from that file)."""
    spec = importlib.util.spec_from_file_location("t2i_tests", REPO / "tests" / "tasks" / "test_task_t2i.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_sd(root)


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> dict:
    """The namespace after running every python block of the page, in order."""
    model = build_tiny_sd(tmp_path_factory.mktemp("sd"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENCH_SD_MODEL", str(model))
        namespace: dict = {"__name__": "python_api_page"}
        for number, block in enumerate(python_blocks(PAGE.read_text()), start=1):
            exec(compile(block, f"{PAGE.name} python block {number}", "exec"), namespace)
    return namespace


def test_the_page_has_its_blocks():
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) >= 8
    assert any("guide_pipeline(" in block for block in blocks) and any("observe(" in block for block in blocks)


def test_plain_loop_reproduces_the_harness_sample(session):
    difference = (session["x_ours"] - session["x_harness"]).abs().max().item()
    assert difference <= SAME, difference


def test_dng_posterior_moves_and_sets_the_scale(session):
    posterior, scale = (torch.stack([row[key] for row in session["dng_traces"]]).double() for key in ("posterior", "guidance_scale"))
    lam0 = session["dng"].params.scale
    assert torch.allclose(posterior[0], torch.full_like(posterior[0], 0.25))  # the prior guides the first step
    assert posterior.max() > 0.3 and posterior[-1].max() < 0.01  # it rises on chains heading for the centre, then falls (as the page says)
    assert torch.allclose(scale, lam0 * posterior / (1 - posterior), rtol=1e-5)
    # and the method does its job on the mixture: fewer samples in the removed mode than unguided
    assert session["share_dng"] < session["share_unguided"] / 2


def test_dng_posterior_in_the_pipeline(session):
    traces = session["sd_traces"]
    posterior, scale = traces["posterior"].double(), traces["guidance_scale"].double()
    assert posterior.shape == (session["steps"], 1) and traces["t"].tolist() == [int(t) for t in session["pipe"].scheduler.timesteps]
    assert posterior[0].item() == pytest.approx(0.01)
    assert (posterior[1:] - posterior[0]).abs().max() > 1e-4  # updated from the realised latents
    assert torch.allclose(scale, 18.0 * posterior / (1 - posterior), rtol=1e-5)


def test_pipeline_at_scale_zero_is_the_plain_pipeline(session):
    difference = float(np.abs(session["unchanged"] - session["plain"]).max())
    assert difference <= SAME, difference


def test_pipeline_with_np_dng_and_sld_changes_the_image(session):
    for name in ("guided", "np_images", "sld_images"):
        assert session[name].shape == session["plain"].shape
        assert float(np.abs(session[name] - session["plain"]).max()) > CHANGED, name


def test_forgetting_the_callback_is_an_error(session):
    pipe, guide_pipeline, load_method = session["pipe"], session["guide_pipeline"], session["load_method"]
    with guide_pipeline(pipe, load_method("dng"), negative_prompt="an egg"):
        with pytest.raises(RuntimeError, match="callback_on_step_end=guidance.callback"):
            pipe("a table", num_inference_steps=2, output_type="latent")


def test_methods_the_pipeline_cannot_feed_are_refused(session):
    pipe, guide_pipeline, load_method = session["pipe"], session["guide_pipeline"], session["load_method"]
    with pytest.raises(ValueError, match="posterior_logit"):
        with guide_pipeline(pipe, load_method("dng-exact"), negative_prompt="an egg"):
            pass
    hooks = len(pipe.unet._forward_hooks) + len(pipe.unet._forward_pre_hooks)
    assert hooks == 0  # every block removed its hooks


def test_every_method_the_pipeline_can_feed_runs_in_it(session):
    pipe, guide_pipeline, load_method = session["pipe"], session["guide_pipeline"], session["load_method"]
    from negguide.datasets.diffusers_guidance import PROVIDED
    from negguide.methods import available_methods

    fed = [name for name in available_methods() if set(load_method(name).needs) <= set(PROVIDED)]
    assert {"np", "sld", "dng", "sld-sd", "sega-sd", "perp-neg", "apg"} <= set(fed)
    for name in fed:
        with guide_pipeline(pipe, load_method(name), negative_prompt="an egg") as guidance:
            latents = pipe("a table", num_inference_steps=1, output_type="latent", generator=torch.Generator().manual_seed(0),
                           callback_on_step_end=guidance.callback).images
        assert torch.isfinite(latents).all() and guidance.traces()["t"].numel() == 1, name
