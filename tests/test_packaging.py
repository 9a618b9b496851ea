"""The wheel installs one import namespace, `negguide`, beside Hugging Face `datasets` without clobbering it.

The repository's folders (bench/ methods/ metrics/ datasets/ results/ dashboard/) are mapped under `negguide`
by pyproject's `package-dir`; as top-level packages, our `datasets/` used to overwrite Hugging Face's. This module
builds the wheel from a copy of the working tree, installs it with Hugging Face `datasets` into a fresh virtual
environment (which borrows torch and friends from the running interpreter's site-packages), and checks, from a
folder outside the repository, that both import and work, that the package data is installed, that nothing but
`negguide` lands at the top level, and that uninstalling ours leaves `datasets` working.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIST = "negguide-bench"
FOLDERS = ("bench", "methods", "metrics", "datasets", "results", "dashboard")  # installed as negguide.<folder>
NOT_TOP_LEVEL = ("bench", "methods", "metrics", "results", "dashboard", "benchmarks")  # `datasets` is Hugging Face's
CSV_ROWS = [{"text": "hello", "label": 0}, {"text": "world", "label": 1}]

# Runs inside the venv, from a folder of its own (sys.path[0]); prints one JSON line after MARK.
PROBE = r'''
import importlib.metadata, importlib.util, json, sys, sysconfig
from pathlib import Path

MARK = "@@PROBE@@"
here = Path(__file__).resolve().parent
report = {"prefix": sys.prefix, "purelib": sysconfig.get_paths()["purelib"]}

import datasets
report["datasets_file"] = datasets.__file__
report["has_load_dataset"] = hasattr(datasets, "load_dataset")
csv = here / "tiny.csv"
csv.write_text("text,label\nhello,0\nworld,1\n")
ds = datasets.load_dataset("csv", data_files=str(csv), split="train", cache_dir=str(here / "hf-cache"))
report["rows"] = ds.to_list()

if sys.argv[1] == "installed":
    import negguide, negguide.datasets, negguide.methods, negguide.bench.cli
    names = ("negguide", "negguide.datasets", "negguide.methods", "negguide.bench", "negguide.bench.cli")
    report["modules"] = {name: sys.modules[name].__file__ for name in names}
    dist = importlib.metadata.distribution("negguide-bench")
    report["dist_location"] = str(dist.locate_file(""))
    scripts = [ep for ep in dist.entry_points if ep.group == "console_scripts"]
    report["scripts"] = {ep.name: ep.value for ep in scripts}
    report["bench_entry_point_ok"] = all(ep.load() is negguide.bench.cli.main for ep in scripts if ep.name == "bench")
    top = {}
    for name in sys.argv[2:]:
        spec = importlib.util.find_spec(name)
        top[name] = None if spec is None else ([spec.origin] if spec.origin else list(spec.submodule_search_locations or []))
    report["top_level"] = top

print(MARK + json.dumps(report))
'''


@dataclass
class Env:
    base: Path
    src: Path  # the copy of the working tree the wheel was built from
    wheel: Path
    venv: Path
    python: Path
    purelib: Path
    environ: dict
    installed: bool = True

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return _run([str(self.python), *args], self.base, self.environ, timeout)

    def pip(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("-m", "pip", *args, "--disable-pip-version-check", "--no-input")

    def install_wheel(self) -> None:
        # --ignore-installed: never touch (or even look at) a negguide-bench the running interpreter has
        proc = self.pip("install", "--no-deps", "--no-index", "--ignore-installed", str(self.wheel))
        assert proc.returncode == 0, f"installing the wheel failed:\n{_tail(proc)}"
        self.installed = True

    def probe(self, mode: str) -> dict:
        work = self.base / f"probe-{mode}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        (work / "probe.py").write_text(PROBE)
        proc = _run([str(self.python), str(work / "probe.py"), mode, *NOT_TOP_LEVEL], work, self.environ, 600)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("@@PROBE@@")]
        assert proc.returncode == 0 and lines, f"the {mode} probe failed in the venv:\n{_tail(proc, 40)}"
        return json.loads(lines[-1][len("@@PROBE@@"):])


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _tail(proc: subprocess.CompletedProcess, lines: int = 25) -> str:
    return "\n".join((proc.stdout + "\n" + proc.stderr).strip().splitlines()[-lines:])


def _inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def _source_files() -> list[str]:
    """The working tree as it would be committed: tracked and untracked-but-not-ignored files that exist."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True, timeout=60).stdout.decode()
        names = [name for name in out.split("\0") if name]
    except (OSError, subprocess.SubprocessError):  # no git: skip what .gitignore names
        skip = {".git", "build", "__pycache__", ".pytest_cache", "bench-data"}
        names = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
                 and not any(part.endswith(".egg-info") for part in p.parts) and p.name != "train_state.pt"]
    return sorted(name for name in names if (ROOT / name).is_file())


def _is_package_data(rel: str) -> bool:
    parts = rel.split("/")
    # A model still in training (weights/NAME-training/) never ships, as pyproject excludes it.
    return (len(parts) == 4 and parts[:2] == ["datasets", "weights"] and not parts[2].endswith("-training")) or (
        len(parts) == 3 and parts[:2] == ["datasets", "prompts"] and rel.endswith(".json"))


def _expected_wheel_files(files: list[str]) -> set[str]:
    """negguide's own modules (the namespace and its shared helpers), every module of the mapped folders' packages, and the package data."""
    present = set(files)
    expected = {rel for rel in files if rel.startswith("negguide/") and rel.count("/") == 1 and rel.endswith(".py")}
    for rel in files:
        parts = rel.split("/")
        if parts[0] not in FOLDERS:
            continue
        in_package = all("/".join(parts[:i] + ["__init__.py"]) in present for i in range(1, len(parts)))
        if (rel.endswith(".py") and in_package) or _is_package_data(rel):
            expected.add("negguide/" + rel)
    return expected


def _environ(base: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", PIP_NO_INPUT="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_HOME=str(base / "hf-home"), HF_DATASETS_CACHE=str(base / "hf-cache"))
    return env


def _own_dist() -> tuple[str, str] | None:
    """The running interpreter's negguide-bench (e.g. the developer's editable install), if any."""
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    return str(dist.locate_file("")), dist.version


def _skip_unless_build_backend() -> None:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"cannot build the wheel: setuptools is not installed in {sys.executable}")
    if int(version.split(".")[0]) < 68:
        pytest.skip(f"cannot build the wheel: pyproject needs setuptools>=68, {sys.executable} has {version}")
    try:
        import setuptools.command.bdist_wheel  # noqa: F401  (setuptools >= 70.1)
    except ImportError:
        try:
            import wheel.bdist_wheel  # noqa: F401
        except ImportError:
            pytest.skip(f"cannot build the wheel: setuptools {version} needs the `wheel` package, missing in {sys.executable}")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    base = tmp_path_factory.mktemp("packaging")
    environ = _environ(base)

    # 1. The wheel, from a copy of the working tree (a build in the checkout would write build/ and *.egg-info
    # there, and a stale build/lib would leak deleted modules into the wheel).
    _skip_unless_build_backend()
    src = base / "src"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "--disable-pip-version-check", "-w", str(base / "wheels"), str(src)], base, environ, 600)
    wheels = sorted((base / "wheels").glob("negguide_bench-*.whl"))
    assert proc.returncode == 0 and len(wheels) == 1, f"building the wheel failed:\n{_tail(proc, 40)}"

    # 2. A venv that sees the running interpreter's site-packages (torch, numpy, pip) behind its own.
    venv = base / "venv"
    proc = _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], base, environ, 120)
    assert proc.returncode == 0, f"creating the venv failed:\n{_tail(proc)}"
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    proc = _run([str(python), "-c", "import json, sys, sysconfig; print(json.dumps([sys.prefix, sysconfig.get_paths()['purelib']]))"],
                base, environ, 60)
    assert proc.returncode == 0, f"the venv's python does not run:\n{_tail(proc)}"
    prefix, purelib = json.loads(proc.stdout)
    assert _inside(prefix, venv), f"the venv's python runs with prefix {prefix}, not {venv}"
    purelib = Path(purelib)
    if sys.prefix != sys.base_prefix:  # running from a venv: --system-site-packages alone would see the base interpreter's
        (purelib / "_parent_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    e = Env(base, src, wheels[0], venv, python, purelib, environ)
    if e.pip("--version").returncode != 0:
        proc = e.run("-m", "ensurepip")
        if proc.returncode != 0:
            pytest.skip(f"no pip for the test venv:\n{_tail(proc)}")

    # 3. Hugging Face `datasets` (from the index), then our wheel.
    proc = e.pip("install", "datasets")
    if proc.returncode != 0:
        pytest.skip(f"cannot install Hugging Face `datasets` into the test venv (no network or index?):\n{_tail(proc)}")
    e.install_wheel()
    return e


def test_wheel_installs_negguide_beside_hf_datasets(env: Env):
    # The wheel holds `negguide` (every module of the mapped folders, and the package data) and nothing else.
    with zipfile.ZipFile(env.wheel) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        sizes = {info.filename: info.file_size for info in zf.infolist()}
    top = {n.split("/")[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"negguide"} and len(dist_info) == 1, f"top-level entries of the wheel: {sorted(top)}"
    files = _source_files()
    expected = _expected_wheel_files(files)
    shipped = {n for n in names if n.startswith("negguide/")}
    assert not expected - shipped, f"missing from the wheel: {sorted(expected - shipped)}"
    assert not shipped - expected, f"unexpected in the wheel: {sorted(shipped - expected)}"
    data = [rel for rel in files if _is_package_data(rel)]
    assert any(rel.startswith("datasets/weights/") for rel in data) and any(rel.startswith("datasets/prompts/") for rel in data)
    for rel in data:
        assert sizes["negguide/" + rel] == (ROOT / rel).stat().st_size, f"negguide/{rel} differs in size from {rel}"

    if not env.installed:
        env.install_wheel()
    report = env.probe("installed")
    site_dir = env.purelib
    # Hugging Face `datasets` is the real one, and works.
    assert report["has_load_dataset"], f"`datasets` in the venv is not Hugging Face's: {report['datasets_file']}"
    assert not _inside(report["datasets_file"], ROOT) and not _inside(report["datasets_file"], site_dir / "negguide")
    assert report["rows"] == CSV_ROWS
    # Ours comes from the wheel in the venv, not from the checkout (the running interpreter's editable finder).
    for name, path in report["modules"].items():
        assert _inside(path, site_dir / "negguide"), f"{name} resolves to {path}, not into {site_dir}"
    assert _inside(report["dist_location"], site_dir)
    assert report["scripts"] == {"bench": "negguide.bench.cli:main"} and report["bench_entry_point_ok"]
    # The MNIST weights and the prompts are installed under negguide/datasets/.
    installed = site_dir / "negguide"
    for rel in data:
        assert (installed / rel).is_file(), f"{rel} is not installed under {installed}"
        assert (installed / rel).stat().st_size == (ROOT / rel).stat().st_size
    # No top-level module of ours besides `negguide` (one from elsewhere, e.g. the base site-packages, is not ours).
    ours = {name: where for name, where in report["top_level"].items()
            if where is not None and any(_inside(w, site_dir) or _inside(w, ROOT) for w in where)}
    assert not ours, f"importable at the top level from the venv: {ours}"


def test_uninstall_leaves_hf_datasets_working(env: Env):
    before = _own_dist()
    proc = env.pip("uninstall", "-y", DIST)
    assert proc.returncode == 0, f"uninstalling {DIST} failed:\n{_tail(proc)}"
    env.installed = False
    assert not (env.purelib / "negguide").exists(), f"uninstall left {env.purelib / 'negguide'} behind"
    assert not list(env.purelib.glob("negguide_bench-*.dist-info"))
    assert _own_dist() == before, "the running interpreter's negguide-bench changed"
    report = env.probe("uninstalled")
    assert report["has_load_dataset"], f"`datasets` in the venv is not Hugging Face's: {report['datasets_file']}"
    assert report["rows"] == CSV_ROWS
