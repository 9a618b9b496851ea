"""The structure the design card declares: who may import whom, no circles, no work at import."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("structure", REPO / "benchmarks" / "structure.py")
structure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(structure)


def test_imports_run_only_downwards():
    assert not structure.upward(structure.import_graph(REPO))


def test_no_import_circles():
    assert not structure.circles(structure.import_graph(REPO))


def test_the_structure_script_finds_what_it_should(tmp_path):
    """A method importing the harness, and two modules importing each other, are reported."""
    for folder, text in (("methods", "from negguide.bench.cli import main\n"), ("bench", "from negguide.bench.other import x\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.py").write_text(text)
    (tmp_path / "bench" / "other.py").write_text("from negguide.bench.a import y\n")
    graph = structure.import_graph(tmp_path)
    assert structure.upward(graph) == ["methods.a -> bench.cli"]
    assert structure.circles(graph) == ["bench.a -> bench.other -> bench.a"]


def test_importing_does_no_work_and_changes_nothing_process_wide():
    """Importing every module loads no task family, sets no torch thread count and no environment variable."""
    script = """
import importlib, os, pkgutil, sys
import torch
threads, environ = torch.get_num_threads(), dict(os.environ)
import negguide
for folder in ("methods", "metrics", "datasets", "bench", "results"):
    package = importlib.import_module("negguide." + folder)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name not in ("negguide.bench.run.ray",):  # ray is imported only when asked for
            importlib.import_module(info.name)
assert torch.get_num_threads() == threads, "a module changed torch's thread count"
assert dict(os.environ) == environ, "a module changed the environment"
import negguide.bench.tasks as tasks
assert tasks.catalog.cache_info().currsize == 0, "the task registry was filled at import"
assert "ray" not in sys.modules, "ray was imported"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd="/")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_methods_import_nothing_but_torch_and_themselves():
    """The bottom floor: a user's method needs nothing of the harness."""
    script = "import sys, negguide.methods, negguide.methods.registry; print(sorted(m for m in sys.modules if m.startswith('negguide.') and not m.startswith('negguide.methods')))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-1000:]
