"""A run names its sampler: ids, store rows, pairing, plugins, and bad input refused in one line."""
from __future__ import annotations

import importlib.metadata
import json
import sys
import types

import numpy as np
import pytest

from negguide.bench.cli import main as bench_main
from negguide.bench.run.plan import RunRequest, resolve
from negguide.bench.run.shards import pick_device, runtime_for
from negguide.bench.sampler import sample
from negguide.bench.samplers import SAMPLERS, SamplerSpec
from negguide.bench.tasks import get_task
from negguide.methods.registry import load_method
from negguide.bench.samplers.ddim import DDIM
from negguide.results.store import Store
from conftest import run_json

FAST = ("--task", "gmm1d-remove-1", "--samples", "64", "--steps", "10")


def test_the_four_samplers_are_listed_and_described(capsys):
    assert bench_main(["list", "samplers", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"ddpm", "ddim", "dpm-solver++", "euler-ancestral"}
    assert bench_main(["describe", "sampler", "ddim", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["settings"] == [{"name": "eta", "type": "float", "default": 0.0}] and "Song" in card["reference"]


def test_ddpm_runs_keep_the_ids_they_had_before_samplers():
    plain = resolve(RunRequest(task="gmm1d-remove-1", method="dng"))
    assert "sampler" not in plain.config and "sampler_variance" not in plain.config
    assert resolve(RunRequest(task="gmm1d-remove-1", method="dng", sampler="ddpm")).run_id == plain.run_id
    beta = resolve(RunRequest(task="gmm1d-remove-1", method="dng", variance="beta"))
    assert beta.config["sampler_variance"] == "beta"  # the key the runs stored before samplers hashed
    assert resolve(RunRequest(task="gmm1d-remove-1", method="dng", sampler_params={"variance": "beta"})).run_id == beta.run_id
    ddim = resolve(RunRequest(task="gmm1d-remove-1", method="dng", sampler="ddim", sampler_params={"eta": "0"}))
    assert ddim.config["sampler"] == {"name": "ddim", "settings": {"eta": 0.0}} and ddim.run_id != plain.run_id
    assert plain.protocol == "quick" and ddim.protocol is None  # another sampler makes a run exploratory
    assert resolve(RunRequest(task="gmm1d-remove-1", method="dng", protocol="paper")).sampler.variance == "beta"


def test_a_run_stores_its_sampler_and_pairs_only_with_the_same_sampler(db, capsys):
    ddim = run_json(capsys, "--method", "dng", *FAST, "--sampler", "ddim", "--sampler-param", "eta=0.5")
    ddpm = run_json(capsys, "--method", "dng", *FAST)
    assert ddim["sampler"] == {"name": "ddim", "settings": {"eta": 0.5}} and ddpm["sampler"]["name"] == "ddpm"
    rows = Store(db).query("SELECT run_id, sampler, variance FROM runs ORDER BY run_id")
    by_id = {r.run_id: r for r in rows.itertuples()}
    assert json.loads(by_id[ddim["run_id"]].sampler)["name"] == "ddim" and not isinstance(by_id[ddim["run_id"]].variance, str)
    assert by_id[ddpm["run_id"]].variance == "beta_tilde"
    assert bench_main(["compare", ddpm["run_id"], ddim["run_id"]]) == 2
    assert "differ in sampler" in capsys.readouterr().err
    capsys.readouterr()
    # the run header names the sampler
    assert bench_main(["run", "--method", "dng", *FAST, "--sampler", "ddim", "--sampler-param", "eta=0.5", "--no-progress", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert "10 steps of ddim(eta=0.5)" in out
    assert "parameters: " in out and "scale=5.0" in out and "variance=beta_tilde" in out  # the header says which scale ran


@pytest.mark.parametrize("args, message", [
    (["--sampler", "ddimm"], "unknown sampler 'ddimm' (did you mean 'ddim'?)"),
    (["--sampler", "ddim", "--sampler-param", "etta=0"], "sampler 'ddim' has no setting 'etta' (did you mean 'eta'?)"),
    (["--sampler", "ddim", "--sampler-param", "eta=1.5"], "eta must be in [0, 1], got 1.5"),
    (["--sampler", "ddim", "--sampler-param", "eta=x"], "eta='x' is not a valid float"),
    (["--sampler", "euler-ancestral", "--sampler-param", "eta=-0.1"], "eta must be in [0, 1]"),
    (["--sampler", "dpm-solver++", "--sampler-param", "order=3"], "order must be 1 or 2"),
    (["--sampler", "ddim", "--variance", "beta"], "--variance is a setting of the ddpm sampler"),
    (["--sampler-param", "variance=betaa"], "variance must be one of beta_tilde, beta"),
    (["--sampler", "ddim", "--sampler-param", "eta"], "--sampler-param expects key=value"),
    (["--sampler", "ddim", "--steps", "1001"], "--steps must be between 1 and T=1000"),
])
def test_bad_sampler_input_is_one_line_exit_2_and_writes_nothing(db, capsys, args, message):
    argv = ["run", "--method", "dng", "--task", "gmm1d-remove-1", "--samples", "8", "--no-progress", *args]
    assert bench_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not db.exists() and not (db.parent / "artifacts").exists()


class ToyDDIM(DDIM):
    """DDIM that needs at least three steps (a plugin)."""

    name = "toy-ddim"
    summary = "DDIM from a plugin"
    min_steps = 3


@pytest.fixture
def toy_plugin(monkeypatch):
    module = types.ModuleType("toy_sampler_plugin")
    module.ToyDDIM = ToyDDIM
    monkeypatch.setitem(sys.modules, "toy_sampler_plugin", module)
    entries = {"negguide.samplers": [importlib.metadata.EntryPoint("toy-ddim", "toy_sampler_plugin:ToyDDIM", "negguide.samplers")]}
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: entries.get(group, []))
    monkeypatch.setattr(SAMPLERS, "_with_plugins", False)
    yield
    SAMPLERS._table.pop("toy-ddim", None)


def test_a_sampler_from_an_entry_point_runs_like_a_built_in(toy_plugin, db, capsys):
    assert bench_main(["list", "samplers"]) == 0 and "toy-ddim" in capsys.readouterr().out
    toy = run_json(capsys, "--method", "np", *FAST, "--sampler", "toy-ddim")
    ddim = run_json(capsys, "--method", "np", *FAST, "--sampler", "ddim")
    assert toy["sampler"]["name"] == "toy-ddim" and toy["run_id"] != ddim["run_id"]
    assert toy["metrics"] == ddim["metrics"]  # the same transitions as the class it extends
    assert bench_main(["run", "--method", "np", "--task", "gmm1d-remove-1", "--samples", "8", "--steps", "2", "--sampler", "toy-ddim"]) == 2
    assert "--steps must be between 3 and T=1000 for sampler 'toy-ddim', got 2" in capsys.readouterr().err


def test_dng_scores_a_deterministic_step_by_its_variant():
    """On DDPM's own steps the variants coincide; under DDIM eta 0 they differ, and a frozen posterior stays at its prior."""
    task = get_task("gmm1d-remove-1")
    runtime = runtime_for(task, pick_device(task))

    def posterior(params: dict, spec: SamplerSpec) -> np.ndarray:
        _, traces = sample(load_method("dng", params), runtime.condition(np.arange(32)), task.schedule.steps(20), 0, task.shape,
                           dtype=runtime.dtype, sampler=spec.build())
        return traces.arrays()["posterior"]

    ddpm, ddim = SamplerSpec.of("ddpm"), SamplerSpec.of("ddim", {"eta": 0})
    same = [posterior(params, ddpm) for params in ({}, {"means": "sampler"}, {"variance": "sampler"})]
    assert all(np.array_equal(same[0], other) for other in same[1:])
    by_ddpm, by_sampler, frozen = (posterior(params, ddim) for params in ({}, {"means": "sampler"}, {"variance": "sampler"}))
    assert not np.allclose(by_ddpm, by_sampler)
    assert np.allclose(frozen, 0.25, rtol=1e-6)  # no noise, no likelihood ratio: the prior throughout
    assert load_method("dng").config()["params"].get("means") is None  # the default stays out of run ids
    assert load_method("dng", {"means": "sampler"}).config()["params"]["means"] == "sampler"


def test_a_method_draws_its_own_counter_based_noise_from_the_transition():
    from negguide.bench import noise
    from negguide.methods.base import GuidanceMethod

    seen: list = []

    class Renoise(GuidanceMethod):
        name = "renoise-probe"
        needs = ("uncond",)

        def guide(self, step, preds, state):
            seen.append((step.index, step.transition.noise()))
            return preds["uncond"], state

    task = get_task("gmm1d-remove-1")
    runtime = runtime_for(task, pick_device(task))
    for ids in (np.arange(6), np.arange(3, 6)):  # batch-independent: rows 3..5 get the same noise either way
        sample(Renoise(), runtime.condition(ids), task.schedule.steps(4), 5, task.shape, dtype=runtime.dtype, sampler=SamplerSpec.of("ddim").build())
    whole, part = seen[:4], seen[4:]
    for (index, a), (_, b) in zip(whole, part):
        assert np.array_equal(a[3:].numpy(), b.numpy())
        assert not np.allclose(a.numpy(), noise.gaussian(5, np.arange(6), index, task.shape).numpy())  # not the sampler's


def test_submit_carries_the_sampler_into_the_bundle_and_import_resolves_it(tmp_path, monkeypatch):
    from negguide.bench.submit import SUITES, Suite, SuiteEntry, import_bundle, submit
    from negguide.results.bundle import read_bundle

    suite = Suite("tiny", "1", "one exploratory run", (SuiteEntry("gmm1d-remove-1", "quick", (), samples=32, steps=5),))
    monkeypatch.setitem(SUITES, "tiny", suite)
    out, runs = submit("dng", suite, tmp_path / "b.zip", Store(tmp_path / "here" / "a.duckdb"), submitter="t", sampler="ddim",
                       sampler_params={"eta": "0.5"})
    config = read_bundle(out).manifest.runs[0].config
    assert config["sampler"] == {"name": "ddim", "settings": {"eta": 0.5}}
    imported = Store(tmp_path / "there" / "b.duckdb")
    assert import_bundle(out, imported) == runs
    assert json.loads(imported.runs().sampler.iloc[0])["name"] == "ddim"


def test_dng_scores_with_the_ddpm_samplers_variance_unless_told():
    """DNG's `variance` follows DDPM's own setting (Params.follows_sampler); an explicit value wins; other samplers
    have no such setting, so the reference code's beta_tilde stands; the default run's id is the one it always had."""
    def variance(**request) -> str:
        return resolve(RunRequest(task="gmm1d-remove-1", method="dng", **request)).method.params["variance"]

    assert variance() == "beta_tilde" and variance(variance="beta") == "beta" and variance(protocol="paper") == "beta"
    assert variance(variance="beta", params={"variance": "beta_tilde"}) == "beta_tilde"
    assert variance(sampler="ddim") == variance(sampler="dpm-solver++") == "beta_tilde"
    assert resolve(RunRequest(task="gmm1d-remove-1", method="dng")).run_id == \
        resolve(RunRequest(task="gmm1d-remove-1", method="dng", params={"variance": "beta_tilde"})).run_id
