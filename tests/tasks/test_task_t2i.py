"""Text-to-image related vs unrelated (issue #6): tiny Stable Diffusion end to end, SLD as diffusers
computes it, CLIP/Q helpers, the missing-weights errors, and the exact analogue's claim.

The tiny model is built from configs, saved like a Stable Diffusion repository and loaded through
the same code as the real one (BENCH_SD_MODEL); the CLIP judge is a tiny random open_clip model
saved locally (BENCH_CLIP_CHECKPOINT). Nothing is downloaded.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import negguide.bench.tasks.t2i as t2i
from negguide.bench.cli import main as bench_main
from negguide.bench.run.shards import clear_runtimes, runtime_for
from negguide.bench.sampler import sample
from negguide.bench.tasks import TaskOptions, catalog, get_task
from negguide.bench.tasks.spec import Conditioning
from negguide.methods import load_method
from negguide.methods.errors import BenchError
from negguide.metrics.clip import load_clip, q_metric, q_regression, zero_shot

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


# ---- tiny models ---------------------------------------------------------------------------

def write_clip_tokenizer(folder: Path) -> Path:
    """vocab.json + merges.txt for transformers.CLIPTokenizer, derived from open_clip's shipped BPE."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = [tuple(line.split()) for line in gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
    units = list(bytes_to_unicode().values())
    vocab = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    return folder


def build_tiny_sd(root: Path) -> Path:
    """A Stable-Diffusion-shaped repository of tiny random components (latents 4 x 8 x 8, images 64 px)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    files = write_clip_tokenizer(root / "bpe")
    tokenizer = CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt"), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                num_attention_heads=4, max_position_embeddings=77, projection_dim=32))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, use_linear_projection=True)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="epsilon", clip_sample=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "sd")
    return root / "sd"


def build_tiny_clip(root: Path) -> tuple[str, Path]:
    """A tiny random open_clip model (registered config + saved state dict)."""
    import open_clip

    root.mkdir(parents=True, exist_ok=True)
    (root / "tiny-clip-test.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(root / "tiny-clip-test.json")
    torch.manual_seed(1)
    model = open_clip.create_model("tiny-clip-test")
    torch.save(model.state_dict(), root / "tiny_clip.pt")
    return "tiny-clip-test", root / "tiny_clip.pt"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("t2i")
    clip_name, clip_file = build_tiny_clip(root / "clip")
    return {"BENCH_SD_MODEL": str(build_tiny_sd(root)), "BENCH_CLIP_MODEL": clip_name, "BENCH_CLIP_CHECKPOINT": str(clip_file)}


def reload_t2i() -> None:
    """Forget tasks and models read from the environment (BENCH_SD_MODEL, BENCH_PROMPTS, CLIP)."""
    catalog.cache_clear()
    clear_runtimes()
    load_clip.cache_clear()


@pytest.fixture
def t2i_env(tiny_models, monkeypatch, db):
    for key, value in tiny_models.items():
        monkeypatch.setenv(key, value)
    reload_t2i()
    yield tiny_models
    monkeypatch.undo()
    reload_t2i()


def run(capsys, *args: str) -> dict:
    capsys.readouterr()
    code = bench_main(["run", *args, "--json", "--no-progress", "--no-baseline"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


# ---- Stable Diffusion path -------------------------------------------------------------------

def test_tokenizer_from_open_clip_bpe_matches_open_clip(tmp_path):
    import open_clip
    from transformers import CLIPTokenizer

    files = write_clip_tokenizer(tmp_path)
    ours = CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt"), model_max_length=77)
    text = "an English breakfast served on a wooden table"
    ids = ours(text, padding="max_length", max_length=77).input_ids
    reference = open_clip.tokenize([text])[0].tolist()
    length = reference.index(49407) + 1
    assert ids[:length] == reference[:length]


def test_scaled_linear_schedule_matches_diffusers():
    from diffusers import DDPMScheduler

    from negguide.datasets.stable_diffusion import ScaledLinearSchedule, schedule_from_config

    ours = ScaledLinearSchedule().alpha_bars()
    theirs = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod.double().numpy()
    assert np.allclose(ours, theirs, rtol=1e-5)
    assert schedule_from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}).as_dict()["kind"] == "scaled_linear"


def test_v_prediction_is_converted_to_eps():
    from negguide.datasets.stable_diffusion import ModelFacts, StableDiffusion
    from negguide.methods.schedule import Schedule

    class ConstantV(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states):
            return type("Out", (), {"sample": torch.full_like(x, 0.5)})()

    step = Schedule().steps(10)[3]
    model = StableDiffusion(None, None, ConstantV(), None, ModelFacts(prediction_type="v_prediction"), torch.device("cpu"), torch.float32)
    x = torch.randn(2, 4, 8, 8)
    eps = model.eps(x, step, torch.zeros(2, 77, 32))
    assert torch.allclose(eps, step.alpha_bar**0.5 * 0.5 + (1 - step.alpha_bar) ** 0.5 * x, atol=1e-6)


def test_tiny_sd_run_end_to_end(t2i_env, capsys):
    task = get_task("sd2-related-unrelated")
    assert task.shape == (4, 8, 8) and task.schedule.as_dict()["kind"] == "scaled_linear"
    args = ["--task", "sd2-related-unrelated", "--samples", "15", "--steps", "4"]
    unguided = run(capsys, "--method", "none", *args)
    # Method none: every arm is the unguided image at the same noise, so the pairing is exact.
    assert unguided["metrics"]["clip_related"] == pytest.approx(1.0, abs=1e-5)
    assert unguided["metrics"]["q"] == pytest.approx(0.0, abs=1e-5)
    dng = run(capsys, "--method", "dng", *args, "--param", "scale=20", "--param", "prior=0.01", "--param", "tau=0.3", "--param", "delta=0.003")
    assert set(dng["metrics"]) == set(task.metrics)
    assert all(math.isfinite(v) for v in dng["metrics"].values())
    assert dng["metric_samples"]["q"] == 5
    samples = {r["method"]: np.load(Path(r["artifacts_dir"]) / "samples.npz")["x"] for r in (unguided, dng)}
    assert samples["dng"].shape == (15, 3, 64, 64) and samples["dng"].dtype == np.uint8
    # The reference rows do not depend on the method.
    assert np.array_equal(samples["dng"][0::3], samples["none"][0::3])
    assert (Path(dng["artifacts_dir"]) / "grid.png").is_file()
    traces = np.load(Path(dng["artifacts_dir"]) / "traces.npz")
    assert traces["guidance_scale"].shape == (4, 15)


def test_sld_diffusers_and_np_run_on_tiny_sd(t2i_env, capsys):
    args = ["--task", "sd2-english-breakfast", "--samples", "3", "--steps", "3"]
    sld = run(capsys, "--method", "sld-sd", "--param", "preset=max", *args)
    assert sld["params"]["s_s"] == 5000.0 and sld["params"]["warmup"] == 0
    npr = run(capsys, "--method", "np", "--param", "scale=3", *args)
    assert npr["metrics"]["clip_related"] < 1.0


def test_one_batched_unet_forward_per_step(t2i_env):
    task = get_task("sd2-english-breakfast")
    runtime = runtime_for(task, torch.device("cpu"))
    calls = []
    forward = runtime.model.unet.forward
    runtime.model.unet.forward = lambda *a, **k: calls.append(len(a[0])) or forward(*a, **k)
    sample(load_method("dng"), runtime.condition(np.arange(6)), task.schedule.steps(2), 0, task.shape)
    assert calls == [18, 18]  # 6 samples x (uncond, neg, null), once per step


def test_missing_sd_weights_one_line(monkeypatch, capsys, db, tmp_path):
    monkeypatch.setenv("BENCH_SD_MODEL", str(tmp_path / "nowhere"))
    reload_t2i()
    try:
        code = bench_main(["run", "--method", "dng", "--task", "sd2-related-unrelated", "--no-progress"])
        err = capsys.readouterr().err
    finally:
        monkeypatch.undo()
        reload_t2i()
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "BENCH_SD_MODEL" in err and "huggingface-cli download stabilityai/stable-diffusion-2-base" in err


def test_missing_default_model_names_the_hub_id():
    from negguide.datasets.stable_diffusion import DEFAULT_MODEL, locate

    try:
        locate(DEFAULT_MODEL)
    except BenchError as exc:
        assert f"huggingface-cli download {DEFAULT_MODEL}" in str(exc) and "\n" not in str(exc)
    else:
        pytest.skip("Stable Diffusion 2 base is in this machine's Hugging Face cache")


def test_missing_clip_weights_one_line():
    from negguide.metrics.clip import ClipSpec, weights_path

    with pytest.raises(BenchError) as info:
        weights_path(ClipSpec("ViT-B-32", "laion2b_s34b_b79k", None))
    assert "BENCH_CLIP_CHECKPOINT" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(BenchError, match="is not a file"):
        weights_path(ClipSpec("ViT-B-32", "laion2b_s34b_b79k", "/nonexistent.pt"))


def test_runtime_refuses_unpaired_noise(t2i_env):
    task = get_task("sd2-english-breakfast")
    runtime = runtime_for(task, torch.device("cpu"))
    paired = runtime.condition(np.arange(3))
    unpaired = Conditioning(paired.denoiser, np.arange(3), paired.extra_needs, paired.finalize)  # independent noise per sample
    with pytest.raises(BenchError, match="same noise"):
        sample(load_method("np"), unpaired, task.schedule.steps(2), 0, task.shape)


# ---- NAG in the cross-attention layers -----------------------------------------------------------

def attention_by_hand(attn, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head, heads merged: Z before the output projection."""
    q, k, v = attn.to_q(hidden), attn.to_k(context), attn.to_v(context)
    d = q.shape[-1] // attn.heads
    heads = [torch.softmax(q[..., h * d:(h + 1) * d] @ k[..., h * d:(h + 1) * d].transpose(1, 2) / math.sqrt(d), dim=-1) @ v[..., h * d:(h + 1) * d]
             for h in range(attn.heads)]
    return torch.cat(heads, dim=-1)


def test_nag_processor_guides_its_rows_and_leaves_the_others():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from negguide.datasets.stable_diffusion import NAGCrossAttention, NAGRows
    from negguide.methods.nag import normalized_attention

    torch.manual_seed(3)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()
    hidden, context, negative = torch.randn(4, 10, 16), torch.randn(4, 7, 12), torch.randn(2, 7, 12)
    rows = torch.tensor([1, 3])
    with torch.no_grad():
        plain = AttnProcessor2_0()(attn, hidden, context)
        got = NAGCrossAttention(NAGRows(2.0, 2.5, 0.5, rows, negative))(attn, hidden, context)
        z_pos = attention_by_hand(attn, hidden[rows], context[rows])
        z_neg = attention_by_hand(attn, hidden[rows], negative)
        want = attn.to_out[0](normalized_attention(z_pos, z_neg, 2.0, 2.5, 0.5))
    assert torch.equal(got[[0, 2]], plain[[0, 2]])
    torch.testing.assert_close(got[rows], want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[rows], plain[rows], atol=1e-3)


def test_nag_prediction_uses_processors_in_the_forward_and_restores_them(t2i_env, monkeypatch):
    import negguide.datasets.stable_diffusion as sd

    task = get_task("sd2-english-breakfast")
    runtime = runtime_for(task, torch.device("cpu"))
    unet = runtime.model.unet
    before = unet.attn_processors
    cross = [name for name in before if name.endswith("attn2.processor")]
    seen = []  # the processor of each cross-attention layer while the formula runs
    formula = sd.normalized_attention
    monkeypatch.setattr(sd, "normalized_attention", lambda *a: seen.append({n: type(unet.attn_processors[n]) for n in cross}) or formula(*a))
    ids, step = np.arange(6), task.schedule.steps(4)[1]
    x = torch.randn((6, *task.shape), generator=torch.Generator().manual_seed(0))
    x = x[np.arange(6) // 3 * 3]  # the arms of a triple share x_T
    denoiser = runtime.condition(ids).denoiser
    preds = {}
    for scale in ("0", "2"):
        method = load_method("nag", {"scale": scale})
        method.prepare_models(denoiser)  # what the sampler does first
        preds[scale] = denoiser(x, step, ("uncond", "nag", "null"))
        method.cleanup_models(denoiser)
    assert len(seen) == 2 * len(cross) and all(set(s.values()) == {sd.NAGCrossAttention} for s in seen)
    assert unet.attn_processors == before  # the very same processor objects are back
    torch.testing.assert_close(preds["0"]["nag"], preds["0"]["uncond"], rtol=1e-5, atol=1e-5)  # scale 0: the plain positive
    assert not torch.allclose(preds["2"]["nag"], preds["2"]["uncond"], atol=1e-3)
    assert torch.equal(preds["2"]["uncond"], preds["0"]["uncond"]) and torch.equal(preds["2"]["null"], preds["0"]["null"])


def test_nag_runs_end_to_end_on_tiny_sd(t2i_env, capsys):
    from diffusers.models.attention_processor import AttnProcessor2_0

    args = ["--task", "sd2-english-breakfast", "--samples", "6", "--steps", "3"]
    images = {}
    for label, extra in (("none", ["--method", "none"]), ("nag", ["--method", "nag"]), ("nag0", ["--method", "nag", "--param", "scale=0"])):
        result = run(capsys, *args, *extra)
        assert all(math.isfinite(v) for v in result["metrics"].values())
        images[label] = np.load(Path(result["artifacts_dir"]) / "samples.npz")["x"].astype(np.int16)
    assert result["params"] == {"scale": 0.0, "tau": 2.5, "alpha": 0.5}
    guided = np.arange(6) % 3 != 0
    assert np.array_equal(images["nag"][~guided], images["none"][~guided])  # reference arms stay unguided
    assert np.abs(images["nag"][guided] - images["none"][guided]).max() > 10  # NAG changed the guided arms
    assert np.abs(images["nag0"] - images["none"]).max() <= 1  # scale 0: the plain positive run (float rounding apart)
    unet = runtime_for(get_task("sd2-english-breakfast"), torch.device("cpu")).model.unet
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())


# ---- SLD as diffusers computes it --------------------------------------------------------------

def diffusers_sld_reference(eps_p, eps_s, eps_null, w, cfg):
    """diffusers StableDiffusionPipelineSafe's guidance, transcribed from its denoising loop."""
    momentum, outputs = None, []
    for i in range(len(eps_p)):
        guidance = eps_p[i] - eps_null[i]
        momentum = torch.zeros_like(guidance) if momentum is None else momentum
        scale = torch.clamp(torch.abs(eps_p[i] - eps_s[i]) * cfg["s_s"], max=1.0)
        scale = torch.where((eps_p[i] - eps_s[i]) >= cfg["threshold"], torch.zeros_like(scale), scale)
        safety = (eps_s[i] - eps_null[i]) * scale + cfg["s_m"] * momentum
        momentum = cfg["beta_m"] * momentum + (1 - cfg["beta_m"]) * safety
        if i >= cfg["warmup"]:
            guidance = guidance - safety
        outputs.append(eps_null[i] + w * guidance)
    return outputs


@pytest.mark.parametrize("preset", ["weak", "medium", "strong", "max"])
def test_sld_sd_matches_diffusers_under_the_t2i_convention(preset):
    from negguide.methods.schedule import Schedule
    from negguide.methods.sld_diffusers import PRESETS, DiffusersSLD

    torch.manual_seed(0)
    steps = Schedule().steps(20)
    eps_p, eps_s, eps_null = (list(torch.randn(20, 2, 4, 3, 3) * 0.05) for _ in range(3))
    method, w = DiffusersSLD(DiffusersSLD.Params(preset=preset)), 7.5
    state = method.init_state(2, eps_p[0])
    ours = []
    for i, step in enumerate(steps):
        eps, state = method.guide(step, {"uncond": eps_p[i], "neg": eps_s[i], "null": eps_null[i]}, state)
        ours.append(eps_null[i] + w * (eps - eps_null[i]))  # the runtime's finalize
    for a, b in zip(ours, diffusers_sld_reference(eps_p, eps_s, eps_null, w, PRESETS[preset])):
        assert torch.allclose(a, b, atol=1e-6)


def test_sld_sd_presets_and_overrides():
    from negguide.methods.registry import build_params
    from negguide.methods.sld_diffusers import DiffusersSLD

    with pytest.raises(BenchError, match="preset=custom"):
        build_params(DiffusersSLD, {"preset": "strong", "threshold": "0.5"})
    custom = build_params(DiffusersSLD, {"preset": "custom", "threshold": "0.5"})
    assert custom.effective()["threshold"] == 0.5
    strong = DiffusersSLD(build_params(DiffusersSLD, {"preset": "strong"}))
    params = strong.config()["params"]
    assert params["s_s"] == 2000.0 and params["warmup"] == 7
    assert DiffusersSLD.Params(**params).effective() == strong.params.effective()  # a stored config rebuilds


# ---- CLIP score and Q --------------------------------------------------------------------------

def test_q_metric_and_regression():
    assert q_metric(np.array([0.9, 0.8]), np.array([0.6, 0.5])) == pytest.approx(0.3)
    related = np.array([0.9, 0.8, 0.7, 0.6])
    unrelated = 0.5 * related + 0.45  # a line y = a x + b
    middle = (0.9 + 0.6) / 2
    assert q_regression(related, unrelated) == pytest.approx((0.5 - 1) * middle + 0.45)
    assert q_regression([0.7], [0.95]) == pytest.approx(0.25)  # one point: Eq. 22


def test_zero_shot_prefers_the_closer_text():
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1]]), dim=-1)
    concept, neutral = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert zero_shot(image, concept, neutral, 100.0)[0] > 0.99


def test_prompt_file_is_valid_and_ours():
    triplets = t2i.load_prompts(t2i.PROMPTS_FILE)
    assert len(triplets) >= 5 and all(t.dng["prior"] == 0.01 for t in triplets)
    assert "not available to us" in json.loads(t2i.PROMPTS_FILE.read_text())["note"]


def test_user_prompt_file_by_option_and_env(monkeypatch, tmp_path):
    default_version = get_task("sd2-related-unrelated").version
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"triplets": [{"id": "kitchen", "positive": "a kitchen", "related": "a kettle", "unrelated": "a whale"}]}))
    options = TaskOptions(prompts=mine)  # what --prompts passes: no environment variable is set
    single, every = get_task("sd2-kitchen", options), get_task("sd2-related-unrelated", options)
    assert single.protocol("paper").samples == 3 * 32 and every.protocol("quick").samples == 3
    assert every.version != default_version  # the prompts are part of the task version
    with pytest.raises(BenchError, match="unknown task 'sd2-kitchen'"):
        get_task("sd2-kitchen")  # the default catalog is untouched
    monkeypatch.setenv("BENCH_PROMPTS", str(mine))
    reload_t2i()
    try:
        assert get_task("sd2-kitchen").version == single.version
    finally:
        monkeypatch.undo()
        reload_t2i()


def test_bad_prompt_file_is_one_line(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"triplets": [{"id": "x", "positive": "a"}]}))
    with pytest.raises(BenchError, match="lacks related, unrelated"):
        t2i.load_prompts(bad)


# ---- the exact analogue -----------------------------------------------------------------------

ANALOGUE = ["--task", "gmm2d-prompts", "--samples", str(3 * 512), "--steps", "100"]
# DNG with the positive prompt's true prior of the related mode (1/3), the exact Bayes filter (tau 1), no offset.
DNG = ["--param", "scale=2", "--param", "prior=0.33", "--param", "tau=1"]


def test_exact_analogue_unrelated_negative(capsys, db):
    none = run(capsys, "--method", "none", *ANALOGUE)["metrics"]
    assert none["change_related"] == 0.0 and none["change_unrelated"] == 0.0
    exact = run(capsys, "--method", "dng-exact", *ANALOGUE)["metrics"]
    assert exact["change_unrelated"] == 0.0 and exact["forbidden_rate"] < 0.01  # the oracle: p(c-|x, c+) = 0 off the positive set
    npm = run(capsys, "--method", "np", "--param", "scale=0.6", *ANALOGUE)["metrics"]
    dng = run(capsys, "--method", "dng", *DNG, *ANALOGUE)["metrics"]
    # Comparable change on the related arm (DNG removes the related mode at least as well) ...
    assert abs(dng["modes_changed_related"] - npm["modes_changed_related"]) < 0.1
    assert dng["forbidden_rate"] <= npm["forbidden_rate"]
    # ... but DNG leaves the unrelated arm (nearly) alone, NP does not (paper §4.2, Fig. 6).
    assert dng["modes_changed_unrelated"] < 0.4 * npm["modes_changed_unrelated"]
    assert dng["change_unrelated"] < 0.2 * npm["change_unrelated"]
    assert dng["guidance_unrelated"] < dng["guidance_related"]
    assert dng["q_modes"] > npm["q_modes"] + 0.2
