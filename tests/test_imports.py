"""The structure the design card declares: who may import whom, no circles, no work at import."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("methods", "metrics", "datasets", "bench", "results", "dashboard")
# Who may import whom, by folder (DESIGN.md: cli -> run -> tasks -> {datasets, metrics} -> methods; run -> results;
# dashboard -> results, metrics). Every folder may import itself and the bottom floor, `methods`.
ALLOWED = {
    "methods": {"methods"},
    "metrics": {"metrics", "methods"},
    "datasets": {"datasets", "methods"},
    "results": {"results", "metrics", "methods"},
    "bench": {"bench", "datasets", "metrics", "methods", "results", "dashboard"},  # the CLI launches the dashboard
    "dashboard": {"dashboard", "results", "metrics", "methods"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(("negguide", *parts[:-1])) if parts[-1] == "__init__" else ".".join(("negguide", *parts))


def imports() -> dict[str, set[str]]:
    """Module -> the negguide modules it imports (at any depth of the file)."""
    graph: dict[str, set[str]] = {}
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            found = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module)
                elif isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
            graph[module_name(path)] = {name for name in found if name.startswith("negguide.")}
    return graph


def test_imports_run_only_downwards():
    wrong = []
    for module, targets in imports().items():
        floor = module.split(".")[1]
        for target in targets:
            if target.split(".")[1] not in ALLOWED[floor]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the declared directions:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = imports()
    modules = set(graph)

    def resolve(target: str) -> str | None:  # `from negguide.bench.tasks import X` names the package module
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {r for t in targets if (r := resolve(t)) and r != m} for m, targets in graph.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    # A package importing its own submodules (an __init__ re-exporting) is not a circle of rooms.
    circles = [c for c in circles if not all(part.startswith(c.split(" -> ")[0]) for part in c.split(" -> "))]
    assert not circles, "import circles:\n" + "\n".join(circles)


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
