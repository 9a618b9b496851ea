"""DuckDB store of runs, metrics, traces and class histograms.

One process writes at a time: a writer opens the file, writes a whole run in one transaction
and closes it, so readers (the dashboard, `bench leaderboard`) are locked out only briefly.
DuckDB lets a single process hold a file read-write, so both sides retry while it is busy.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from negguide.methods.errors import BenchError

DEFAULT_DB = Path("bench-data") / "bench.duckdb"
LOCK_WAIT_SECONDS = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    task VARCHAR NOT NULL,
    task_version VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    params VARCHAR NOT NULL,
    profile VARCHAR,
    seed BIGINT NOT NULL,
    samples BIGINT NOT NULL,
    steps INTEGER NOT NULL,
    sweep_id VARCHAR,
    config VARCHAR NOT NULL,
    git_commit VARCHAR,
    packages VARCHAR,
    timings VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    wall_seconds DOUBLE,
    status VARCHAR NOT NULL,
    artifacts_dir VARCHAR,
    protocol VARCHAR,
    variance VARCHAR,
    digests VARCHAR,
    provenance VARCHAR,
    submitter VARCHAR
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    value DOUBLE,
    higher_is_better BOOLEAN NOT NULL,
    samples BIGINT NOT NULL,
    low DOUBLE,
    high DOUBLE,
    interval VARCHAR,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS traces (
    run_id VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    row_index INTEGER NOT NULL,
    t INTEGER NOT NULL,
    mean DOUBLE, q05 DOUBLE, q25 DOUBLE, q50 DOUBLE, q75 DOUBLE, q95 DOUBLE,
    PRIMARY KEY (run_id, name, row_index)
);
CREATE TABLE IF NOT EXISTS class_counts (
    run_id VARCHAR NOT NULL,
    class_index INTEGER NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (run_id, class_index)
);
CREATE TABLE IF NOT EXISTS calibrations (
    calibration_id VARCHAR PRIMARY KEY,
    task VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    params VARCHAR NOT NULL,
    target DOUBLE NOT NULL,
    scale DOUBLE NOT NULL,
    run_id VARCHAR NOT NULL,
    monotone BOOLEAN NOT NULL,
    points VARCHAR NOT NULL,
    created_at TIMESTAMP,
    rule VARCHAR
);
CREATE TABLE IF NOT EXISTS comparisons (
    run_a VARCHAR NOT NULL,
    run_b VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    diff DOUBLE,
    diff_low DOUBLE,
    diff_high DOUBLE,
    interval VARCHAR,
    PRIMARY KEY (run_a, run_b, metric)
);
CREATE TABLE IF NOT EXISTS verifications (
    run_id VARCHAR NOT NULL,
    verified_at TIMESTAMP NOT NULL,
    seed VARCHAR NOT NULL,
    checked BIGINT NOT NULL,
    samples BIGINT NOT NULL,
    detects_share DOUBLE NOT NULL,
    PRIMARY KEY (run_id, verified_at)
);
CREATE TABLE IF NOT EXISTS task_info (
    task VARCHAR PRIMARY KEY,
    info VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS method_info (
    method VARCHAR PRIMARY KEY,
    info VARCHAR NOT NULL
);
"""
TABLES = ("runs", "metrics", "traces", "class_counts")  # a run's rows
# What readers need to know of a task or method without importing it (headline, defaults): the
# newest writer's description, so the leaderboard and dashboard stay free of torch and the registries.
CATALOG = {"task_info": "task", "method_info": "method"}
# Columns added since the first version: a store written before them gets them on its next write.
MIGRATIONS = (
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS protocol VARCHAR",
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS variance VARCHAR",
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS digests VARCHAR",
    "ALTER TABLE metrics ADD COLUMN IF NOT EXISTS low DOUBLE",
    "ALTER TABLE metrics ADD COLUMN IF NOT EXISTS high DOUBLE",
    "ALTER TABLE metrics ADD COLUMN IF NOT EXISTS interval VARCHAR",
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS provenance VARCHAR",
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS submitter VARCHAR",
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS sampler VARCHAR",
    "ALTER TABLE calibrations ADD COLUMN IF NOT EXISTS rule VARCHAR",
)
PROVENANCES = ("run here", "self-reported", "verified")
# How a calibration decided that a scale meets its target (docs/trust.md, "One meaning of safe"):
# UPPER95, the upper end of the forbidden share's 95% Wilson interval is at most the target; POINT_RULE,
# the point estimate is (calibrations stored before the rule was recorded, and imported bundles' ones).
UPPER95 = "upper95"
POINT_RULE = "point"
MIN_PREFIX = 4  # shortest run-id prefix accepted in place of an id


def default_db_path() -> Path:
    """`BENCH_DB` if set, else ./bench-data/bench.duckdb."""
    return Path(os.environ.get("BENCH_DB", DEFAULT_DB))


@dataclass
class RunRecord:
    """Everything one finished run stores; written in one transaction."""

    run_id: str
    task: str
    task_version: str
    method: str
    params: dict
    profile: str | None
    seed: int
    samples: int
    steps: int
    config: dict
    git_commit: str | None
    packages: dict
    timings: dict
    started_at: float
    finished_at: float
    artifacts_dir: str
    metrics: list[dict] = field(default_factory=list)  # name, value, higher_is_better, samples
    traces: dict[str, dict] = field(default_factory=dict)  # name -> {t: [...], mean: [...], q05: [...], ...}
    class_counts: list[int] = field(default_factory=list)
    sweep_id: str | None = None
    status: str = "done"
    protocol: str | None = None  # the protocol the run satisfies; None: exploratory
    variance: str | None = "beta_tilde"  # DDPM's noise variance (None for the other samplers)
    sampler: str | None = None  # the sampler spec as JSON ({"name", "settings"}); rows from before samplers have none
    digests: dict = field(default_factory=dict)  # content digests of the judge and the reference
    provenance: str = "run here"  # or "self-reported" (imported from a bundle), "verified" (imported, then re-drawn and matched)
    submitter: str | None = None
    task_info: dict = field(default_factory=dict)  # headline, family, classes, metrics (Task.describe without details)
    method_info: dict = field(default_factory=dict)  # summary, needs, parameter defaults


@dataclass
class CalibrationRecord:
    """A matched-safety calibration: the smallest scale meeting `target`, the run it chose, every point it took."""

    calibration_id: str
    task: str
    method: str
    params: str  # the fixed parameters (JSON), the scale excluded
    target: float
    scale: float
    run_id: str
    monotone: bool
    points: str  # JSON list of {scale, run_id, forbidden_rate, interval, reused}
    created_at: float
    rule: str = POINT_RULE  # UPPER95 or POINT_RULE: what "meets the target" meant


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used" in text


class Store:
    """Short-lived connections to one DuckDB file."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_db_path()

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.IOException as exc:
                if not _is_lock_error(exc):
                    raise BenchError(f"cannot open the store {self.path}: {_first_line(exc)}; pass --db with another path") from None
                if time.monotonic() > deadline:
                    raise BenchError(f"the store {self.path} stayed locked by another process for {LOCK_WAIT_SECONDS:.0f} s; try again") from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def exists(self) -> bool:
        return self.path.is_file()

    def check(self, writing: bool) -> None:
        """Fail before any work when the store cannot be read (or written): one line naming the fix."""
        if self.path.is_dir():
            raise BenchError(f"the store {self.path} is a folder; pass --db path/to/file.duckdb")
        artifacts = self.path.parent / "artifacts"
        if writing and artifacts.exists() and not _writable_folder(artifacts):
            raise BenchError(f"the artifacts folder {artifacts} beside the store is not a writable folder; pass --db with a writable path")
        if self.exists():
            self._connect(read_only=True).close()  # not a DuckDB file: BenchError
            if writing and not os.access(self.path, os.W_OK):
                raise BenchError(f"the store {self.path} is not writable; pass --db with a writable path")
            if writing:
                self.recover_imports()
            return
        if writing:
            ancestor = self.path.parent
            while not ancestor.exists() and ancestor != ancestor.parent:
                ancestor = ancestor.parent
            if not ancestor.is_dir():
                raise BenchError(f"cannot create the store's folder {self.path.parent}: {ancestor} is a file; pass --db with a path in a folder")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise BenchError(f"cannot create the store {self.path}: {ancestor} is not writable (read-only?); pass --db with a writable path")

    def _transaction(self, write) -> None:
        """Open, bring the schema up to date, run `write(con)` in one transaction, close."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._connect(read_only=False)
        try:
            con.execute(SCHEMA)
            for statement in MIGRATIONS:
                con.execute(statement)
            con.execute("BEGIN TRANSACTION")
            try:
                write(con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()

    def write_run(self, record: RunRecord) -> None:
        """Insert (or replace) a whole run atomically: all its rows or none."""
        def write(con: duckdb.DuckDBPyConnection) -> None:
            for table in TABLES:
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", [record.run_id])
            self._insert(con, record)

        self._transaction(write)

    def write_runs(self, records: list[RunRecord]) -> None:
        """Several runs in one transaction (an imported bundle): all of them or none."""
        def write(con: duckdb.DuckDBPyConnection) -> None:
            for record in records:
                for table in TABLES:
                    con.execute(f"DELETE FROM {table} WHERE run_id = ?", [record.run_id])
                self._insert(con, record)

        self._transaction(write)

    def mark_verified(self, checks: list[dict]) -> None:
        """Mark runs verified with what was checked: {run_id, seed, checked, samples, detects_share} each (the badge's evidence)."""
        def write(con: duckdb.DuckDBPyConnection) -> None:
            now = time.time()
            for check in checks:
                con.execute("UPDATE runs SET provenance = 'verified' WHERE run_id = ?", [check["run_id"]])
                con.execute("INSERT INTO verifications VALUES (?, to_timestamp(?), ?, ?, ?, ?)",
                            [check["run_id"], now, str(check["seed"]), check["checked"], check["samples"], check["detects_share"]])

        self._transaction(write)

    def verifications(self, run_id: str) -> pd.DataFrame:
        """What each verification of a run checked (empty for a store older than the table)."""
        if not self.exists() or "verifications" not in self._tables():
            return pd.DataFrame(columns=["run_id", "verified_at", "seed", "checked", "samples", "detects_share"])
        return self.query("SELECT * FROM verifications WHERE run_id = ? ORDER BY verified_at", [run_id])

    def write_import(self, records: list[RunRecord], calibrations: list[CalibrationRecord]) -> None:
        """An imported bundle's runs and calibrations in one transaction; a run or calibration id stored here refuses them all."""
        def write(con: duckdb.DuckDBPyConnection) -> None:
            for record in records:
                found = con.execute("SELECT provenance FROM runs WHERE run_id = ?", [record.run_id]).fetchone()
                if found is not None:
                    raise BenchError(f"run {record.run_id} is already in the store {self.path} ({found[0] or 'run here'}); import never replaces "
                                     "a stored run: import into another --db")
                self._insert(con, record)
            for calibration in calibrations:
                if con.execute("SELECT 1 FROM calibrations WHERE calibration_id = ?", [calibration.calibration_id]).fetchone():
                    raise BenchError(f"calibration {calibration.calibration_id} is already in the store {self.path}; import never replaces it")
                self._insert_calibration(con, calibration)

        self._transaction(write)

    def recover_imports(self) -> None:
        """Finish or undo an import a kill interrupted: staged run folders move into place when the store has their
        rows (the transaction committed), and are removed otherwise (it did not)."""
        root = self.path.parent / "artifacts"  # the engine's artifacts root (bench.run.engine.artifacts_root)
        staged = [folder for folder in root.glob(".import-*") if folder.is_dir() and not _owner_alive(folder)] if root.is_dir() else []
        if not staged:
            return
        present = set(self.query("SELECT run_id FROM runs").run_id) if self.exists() else set()
        for folder in staged:
            for run_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
                if run_dir.name in present and not (root / run_dir.name).exists():
                    os.rename(run_dir, root / run_dir.name)
            shutil.rmtree(folder, ignore_errors=True)

    def write_calibration(self, record: CalibrationRecord) -> None:
        def write(con: duckdb.DuckDBPyConnection) -> None:
            con.execute("DELETE FROM calibrations WHERE calibration_id = ?", [record.calibration_id])
            self._insert_calibration(con, record)

        self._transaction(write)

    @staticmethod
    def _insert_calibration(con: duckdb.DuckDBPyConnection, record: CalibrationRecord) -> None:
        con.execute("INSERT INTO calibrations (calibration_id, task, method, params, target, scale, run_id, monotone, points, created_at, rule) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, to_timestamp(?), ?)",
                    [record.calibration_id, record.task, record.method, record.params, record.target, record.scale, record.run_id,
                     record.monotone, record.points, record.created_at, record.rule])

    def write_comparison(self, run_a: str, run_b: str, rows: list[dict]) -> None:
        """Paired differences b - a per metric (`bench compare`, `bench run`'s baseline), so readers need not recompute them."""
        def write(con: duckdb.DuckDBPyConnection) -> None:
            con.execute("DELETE FROM comparisons WHERE run_a = ? AND run_b = ?", [run_a, run_b])
            con.executemany("INSERT INTO comparisons VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [[run_a, run_b, r["metric"], _finite(r["difference"]), _finite(r["difference_interval"][0]), _finite(r["difference_interval"][1]),
                              r["interval_method"]] for r in rows])

        self._transaction(write)

    def comparison(self, run_a: str, run_b: str) -> pd.DataFrame:
        """The stored paired comparison of b against a (empty when none was computed)."""
        if not self.exists() or "comparisons" not in self._tables():
            return pd.DataFrame(columns=["run_a", "run_b", "metric", "diff", "diff_low", "diff_high", "interval"])
        return self.query("SELECT * FROM comparisons WHERE run_a = ? AND run_b = ? ORDER BY metric", [run_a, run_b])

    def calibrations(self, task: str | None = None) -> pd.DataFrame:
        """Stored calibrations (empty for a store older than the table); `rule` is POINT_RULE for rows stored before it was kept."""
        if not self.exists() or "calibrations" not in self._tables():
            return pd.DataFrame(columns=["calibration_id", "task", "method", "params", "target", "scale", "run_id", "monotone", "points",
                                         "created_at", "rule"])
        where, params = ("WHERE task = ?", [task]) if task else ("", [])
        found = _with_columns(self.query(f"SELECT * FROM calibrations {where} ORDER BY created_at", params), ("rule",))
        found["rule"] = found["rule"].fillna(POINT_RULE)
        return found

    def resolve_run_id(self, given: str) -> str:
        """The stored run id that `given` names: the id itself, or a unique prefix of at least MIN_PREFIX characters."""
        given = given.strip()
        if len(given) < MIN_PREFIX:
            raise BenchError(f"run id {given!r} is too short: give at least {MIN_PREFIX} characters of it (`bench runs` lists the ids)")
        found = self.query("SELECT run_id FROM runs WHERE starts_with(run_id, ?) ORDER BY run_id", [given])["run_id"].tolist()
        if given in found:
            return given
        if not found:
            raise BenchError(f"no stored run id starts with {given!r} in the store {self.path}; `bench runs` lists the ids")
        if len(found) > 1:
            shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            raise BenchError(f"run id prefix {given!r} is ambiguous ({len(found)} runs: {shown}); give more characters")
        return found[0]

    def _tables(self) -> set[str]:
        con = self._connect(read_only=True)
        try:
            return {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        finally:
            con.close()

    @staticmethod
    def _insert(con: duckdb.DuckDBPyConnection, r: RunRecord) -> None:
        con.execute(
            "INSERT INTO runs (run_id, task, task_version, method, params, profile, seed, samples, steps, sweep_id, config, git_commit, "
            "packages, timings, started_at, finished_at, wall_seconds, status, artifacts_dir, protocol, variance, digests, provenance, submitter, sampler) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, to_timestamp(?), to_timestamp(?), ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [r.run_id, r.task, r.task_version, r.method, json.dumps(r.params, sort_keys=True), r.profile, r.seed, r.samples, r.steps,
             r.sweep_id, json.dumps(r.config, sort_keys=True), r.git_commit, json.dumps(r.packages, sort_keys=True),
             json.dumps(r.timings), r.started_at, r.finished_at, r.finished_at - r.started_at, r.status, r.artifacts_dir,
             r.protocol, r.variance, json.dumps(r.digests, sort_keys=True), r.provenance, r.submitter, r.sampler],
        )
        if r.metrics:
            con.executemany("INSERT INTO metrics (run_id, name, value, higher_is_better, samples, low, high, interval) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [[r.run_id, m["name"], m["value"], m["higher_is_better"], m["samples"], _finite(m.get("low")), _finite(m.get("high")),
                              m.get("interval", "none")] for m in r.metrics])
        rows = [
            [r.run_id, name, i, int(s["t"][i]), *(float(s[q][i]) for q in ("mean", "q05", "q25", "q50", "q75", "q95"))]
            for name, s in r.traces.items() for i in range(len(s["t"]))
        ]
        if rows:
            con.executemany("INSERT INTO traces VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if r.class_counts:
            con.executemany("INSERT INTO class_counts VALUES (?, ?, ?)", [[r.run_id, c, int(n)] for c, n in enumerate(r.class_counts)])
        for table, key, name, info in (("task_info", "task", r.task, r.task_info), ("method_info", "method", r.method, r.method_info)):
            if info:
                con.execute(f"DELETE FROM {table} WHERE {key} = ?", [name])
                con.execute(f"INSERT INTO {table} VALUES (?, ?)", [name, json.dumps(info, sort_keys=True, default=str)])

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """A read-only query; an absent store reads as empty tables."""
        if not self.exists():
            return _empty_result(sql)
        con = self._connect(read_only=True)
        try:
            tables = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            if not set(TABLES) <= tables:
                return _empty_result(sql)
            return con.execute(sql, params or []).df()
        finally:
            con.close()

    def run_status(self, run_id: str) -> str | None:
        rows = self.query("SELECT status FROM runs WHERE run_id = ?", [run_id])
        return None if rows.empty else str(rows.iloc[0, 0])

    def runs(self, task: str | None = None) -> pd.DataFrame:
        where, params = ("WHERE task = ?", [task]) if task else ("", [])
        runs = _with_columns(self.query(f"SELECT * FROM runs {where} ORDER BY finished_at", params), ("protocol", "variance", "digests", "submitter", "sampler"))
        runs = _with_columns(runs, ("provenance",))
        runs["provenance"] = runs["provenance"].fillna("run here")  # runs stored before provenance was kept were run here
        return runs

    def metrics(self, run_ids: list[str] | None = None) -> pd.DataFrame:
        if run_ids is not None and not run_ids:
            found = self.query("SELECT * FROM metrics WHERE false")
        elif run_ids is None:
            found = self.query("SELECT * FROM metrics")
        else:
            marks = ", ".join("?" for _ in run_ids)
            found = self.query(f"SELECT * FROM metrics WHERE run_id IN ({marks})", list(run_ids))
        return _with_columns(_with_columns(found, ("low", "high"), float("nan")), ("interval",))

    def wide(self, task: str | None = None, intervals: bool = False) -> pd.DataFrame:
        """One row per run with a column per metric (and `<metric>__low`, `<metric>__high`), newest last."""
        runs = self.runs(task)
        if runs.empty:
            return runs
        long = self.metrics(list(runs.run_id))
        columns = {"value": ""} | ({"low": "__low", "high": "__high"} if intervals else {})
        for column, suffix in columns.items():
            values = long.pivot_table(index="run_id", columns="name", values=column, dropna=False).add_suffix(suffix)
            runs = runs.merge(values, left_on="run_id", right_index=True, how="left")
        return runs

    def traces(self, run_id: str) -> pd.DataFrame:
        return self.query("SELECT * FROM traces WHERE run_id = ? ORDER BY name, row_index", [run_id])

    def class_counts(self, run_id: str) -> pd.DataFrame:
        return self.query("SELECT * FROM class_counts WHERE run_id = ? ORDER BY class_index", [run_id])

    def info(self, table: str, name: str) -> dict:
        """The stored description of a task or method ({} when absent, or in a store older than the table)."""
        key = CATALOG[table]
        if not self.exists() or table not in self._tables():
            return {}
        rows = self.query(f"SELECT info FROM {table} WHERE {key} = ?", [name])
        return json.loads(rows.iloc[0, 0]) if not rows.empty else {}


def _writable_folder(folder: Path) -> bool:
    """A file can be created in it: probed, since os.access says yes to root on an immutable folder."""
    if not folder.is_dir():
        return False
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
    except OSError:
        return False
    os.close(handle)
    os.unlink(probe)
    return True


def _owner_alive(folder: Path) -> bool:
    """Whether the process staging an import folder (its `owner` file) still runs: its folder is not ours to touch."""
    try:
        pid = int((folder / "owner").read_text())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _with_columns(frame: pd.DataFrame, columns: tuple[str, ...], fill: object = None) -> pd.DataFrame:
    """Columns a store older than them lacks, filled with nulls."""
    for column in columns:
        if column not in frame:
            frame[column] = fill
    return frame


def _finite(value: float | None) -> float | None:
    """NaN (no interval) is stored as NULL."""
    return None if value is None or value != value else float(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__



def _empty_result(sql: str) -> pd.DataFrame:
    con = duckdb.connect(":memory:")
    try:
        con.execute(SCHEMA)
        return con.execute(sql.replace("?", "NULL")).df() if "?" in sql else con.execute(sql).df()
    finally:
        con.close()
