"""Installed plugins: methods and task families registered under entry points reach every command."""
from __future__ import annotations

import importlib.metadata
import json
import sys
import types

import pytest

from negguide.bench.cli import main as bench_main
from negguide.bench.tasks import TaskOptions, catalog
from negguide.bench.tasks.gmm import GMM1D, _gmm_task
from negguide.methods import GuidanceMethod
from negguide.methods.registry import METHODS


class Halved(GuidanceMethod):
    name = "halved-np"
    summary = "NP at half the scale (a plugin)"

    def guide(self, step, preds, state):
        eps_u, eps_n = preds["uncond"], preds["neg"]
        return eps_u - 0.5 * self.params.scale * (eps_n - eps_u), state


def plugin_tasks(options):
    task = _gmm_task("plugin1d", GMM1D, 0, "a task family from a plugin")
    return [task]


@pytest.fixture
def plugins(monkeypatch):
    module = types.ModuleType("my_plugin")
    module.Halved, module.tasks = Halved, plugin_tasks
    monkeypatch.setitem(sys.modules, "my_plugin", module)
    entries = {"negguide.methods": [importlib.metadata.EntryPoint("halved-np", "my_plugin:Halved", "negguide.methods")],
               "negguide.tasks": [importlib.metadata.EntryPoint("plugin-family", "my_plugin", "negguide.tasks")]}
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: entries.get(group, []))
    for registry in (METHODS, catalog(TaskOptions())):  # forget what earlier tests loaded
        monkeypatch.setattr(registry, "_with_plugins", False)
    yield
    catalog.cache_clear()


def test_a_plugin_method_and_task_run_like_built_ins(plugins, db, capsys):
    assert bench_main(["list", "methods"]) == 0 and "halved-np" in capsys.readouterr().out
    assert bench_main(["list", "tasks"]) == 0 and "plugin1d-remove-0" in capsys.readouterr().out
    code = bench_main(["run", "--method", "halved-np", "--task", "plugin1d-remove-0", "--samples", "32", "--steps", "10", "--json", "--no-progress", "--no-baseline"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["method"] == "halved-np" and result["task"] == "plugin1d-remove-0"


def test_a_plugin_that_shadows_a_built_in_is_refused(monkeypatch, capsys):
    entries = [importlib.metadata.EntryPoint("np", "negguide.methods.dng:DynamicNegativeGuidance", "negguide.methods")]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: entries if group == "negguide.methods" else [])
    monkeypatch.setattr(METHODS, "_with_plugins", False)
    monkeypatch.setattr(METHODS, "_table", None)
    assert bench_main(["list", "methods"]) == 2
    assert "registered twice" in capsys.readouterr().err
