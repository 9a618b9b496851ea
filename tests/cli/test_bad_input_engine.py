"""Bad input met by the engine and the store: one line naming the problem and the fix, exit 2, store unchanged."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from negguide.bench.cli import main as bench_main
from negguide.results.store import Store

QUICK = ["--task", "gmm1d-remove-1", "--samples", "64", "--steps", "20", "--no-progress"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_db_folder_under_a_regular_file(capsys, tmp_path):
    blocker = tmp_path / "plain-file"
    blocker.write_text("not a folder\n")
    assert bench_main(["run", "--method", "np", *QUICK, "--db", str(blocker / "store" / "bench.duckdb")]) == 2
    err = one_error_line(capsys)
    assert "is a file" in err and "--db" in err
    assert blocker.read_text() == "not a folder\n" and not (tmp_path / "artifacts").exists()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a private read-only mount")
def test_db_on_a_read_only_file_system(tmp_path):
    """A read-only tmpfs mounted in a private mount namespace of the child process only."""
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    db = mount_point / "store" / "bench.duckdb"
    command = (f"mount -t tmpfs -o ro,size=1m tmpfs {mount_point} || exit 77; "
               f"exec {sys.executable} -m negguide.bench.cli run --method np {' '.join(QUICK)} --db {db}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=300)
    if done.returncode == 77 or "unshare failed" in done.stderr or "Operation not permitted" in done.stderr:
        pytest.skip(f"cannot mount a read-only file system here: {done.stderr.strip()[:200]}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and "not writable" in done.stderr
    assert not list(mount_point.iterdir())


def test_store_that_is_not_duckdb(capsys, tmp_path):
    fake = tmp_path / "bench.duckdb"
    fake.write_text("these are not the droids\n" * 100)
    before = fake.read_bytes()
    for command in (["run", "--method", "np", *QUICK, "--db", str(fake)], ["leaderboard", "--db", str(fake)]):
        assert bench_main(command) == 2
        assert "not a valid DuckDB database" in one_error_line(capsys)
    assert fake.read_bytes() == before and not (tmp_path / "artifacts").exists()


def test_store_that_is_a_folder(capsys, tmp_path):
    assert bench_main(["run", "--method", "np", *QUICK, "--db", str(tmp_path)]) == 2
    assert "is a folder" in one_error_line(capsys)


def test_the_same_parameter_twice(db, capsys):
    assert bench_main(["run", "--method", "np", *QUICK, "--param", "scale=1", "--param", "scale=2"]) == 2
    assert "--param scale is given twice" in one_error_line(capsys)
    assert bench_main(["sweep", "--method", "np", *QUICK, "--param", "scale=1,2", "--param", "scale=3"]) == 2
    assert "given twice" in one_error_line(capsys)
    assert not db.exists()


WRONG_SHAPE = '''
from negguide.methods import GuidanceMethod

class Flat(GuidanceMethod):
    name = "flat"

    def guide(self, step, preds, state):
        return preds["uncond"].flatten(), state
'''

RAISES = '''
from negguide.methods import GuidanceMethod


def helper(value):
    return value["missing"]


class Broken(GuidanceMethod):
    name = "broken"

    def guide(self, step, preds, state):
        if step.index == 3:
            return helper({}), state
        return preds["uncond"], state
'''


def test_a_method_returning_the_wrong_shape(db, capsys, tmp_path):
    Store(db).check(writing=True)
    path = tmp_path / "flat.py"
    path.write_text(WRONG_SHAPE)
    bench_main(["run", "--method", "none", *QUICK, "--json"])  # one good run: the store must keep it, and only it
    capsys.readouterr()
    assert bench_main(["run", "--method", f"{path}:Flat", *QUICK]) == 2
    err = one_error_line(capsys)
    assert "method 'flat' returned a prediction of shape (64,) at step 0 (t=999), expected (64, 1)" in err
    assert list(Store(db).runs().method) == ["none"]


def test_a_method_that_raises_shows_its_own_frames(db, capsys, tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(RAISES)
    assert bench_main(["run", "--method", f"{path}:Broken", *QUICK]) == 2
    err = capsys.readouterr().err
    first, *rest = err.splitlines()
    assert first.startswith("error: method 'broken' raised KeyError in guide at step 3 (t="), first
    frames = "\n".join(rest)
    assert str(path) in frames and 'return value["missing"]' in frames and 'return helper({}), state' in frames
    assert "negguide" not in frames  # only the method author's frames, not the harness's
    assert not db.exists() or Store(db).runs().empty
