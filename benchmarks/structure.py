"""Print the package's import structure: folders, arrows between them, arrows against the declared
directions, and import circles between modules.

    python benchmarks/structure.py [REPO]

Works on this layout (`negguide.*` imports) and on the earlier one (top-level `bench.*` imports),
so two checkouts can be compared. Exits 1 when an arrow runs against the declared directions or a
circle exists (tests/test_imports.py asserts exit 0).
"""
from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

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


def module_name(repo: Path, path: Path) -> str:
    parts = path.relative_to(repo).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def import_graph(repo: Path) -> dict[str, set[str]]:
    """Module (folder-relative dotted name) -> the project modules it imports anywhere in the file."""
    graph: dict[str, set[str]] = {}
    for folder in FOLDERS:
        for path in sorted((repo / folder).rglob("*.py")) if (repo / folder).is_dir() else []:
            found = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module)
                elif isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
            names = {name.removeprefix("negguide.") for name in found}
            graph[module_name(repo, path)] = {name for name in names if name.split(".")[0] in FOLDERS}
    return graph


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets if t.split(".")[0] not in ALLOWED[m.split(".")[0]])


def circles(graph: dict[str, set[str]]) -> list[str]:
    """Import loops between modules; a package re-exporting its own submodules is not one."""
    modules = set(graph)

    def resolve(target: str) -> str | None:  # `from bench.tasks import X` names the package module
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {r for t in targets if (r := resolve(t)) and r != m} for m, targets in graph.items()}
    state: dict[str, int] = {}
    found: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                loop = path[path.index(nxt):] + [nxt]
                if not all(part.startswith(loop[0]) for part in loop):
                    found.append(" -> ".join(loop))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    return found


def main(argv: list[str]) -> int:
    repo = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    graph = import_graph(repo)
    arrows = Counter((m.split(".")[0], t.split(".")[0]) for m, targets in graph.items() for t in targets if m.split(".")[0] != t.split(".")[0])
    print(f"{repo}: {len(graph)} modules in {len({m.split('.')[0] for m in graph})} folders; {len(arrows)} folder-to-folder arrows")
    for (source, target), count in sorted(arrows.items()):
        print(f"  {source:<9} -> {target:<9} {count} import(s){'   AGAINST THE DIRECTIONS' if target not in ALLOWED[source] else ''}")
    wrong, loops = upward(graph), circles(graph)
    print(f"module imports against the directions: {len(wrong)}")
    for line in wrong:
        print(f"  {line}")
    print(f"import circles: {len(loops)}")
    for line in loops:
        print(f"  {line}")
    return 1 if wrong or loops else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
