"""`bench dashboard`: serve the Streamlit app on one store, blocking until it stops."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from negguide.results.store import default_db_path

APP = Path(__file__).with_name("app.py")


def streamlit_command(db: Path, port: int, host: str) -> list[str]:
    """The streamlit command line serving the app on `db` (headless, no usage statistics)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.headless", "true",
        "--server.address", host,
        "--server.port", str(port),
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",  # a served board does not need to reload on source edits
        "--client.toolbarMode", "viewer",  # readers get no Deploy/Stop buttons
        "--", "--db", str(db),
    ]


def launch(db: str | Path | None, port: int = 8501, host: str = "127.0.0.1") -> int:
    """Run the dashboard until interrupted; an absent store shows the first-run page, not an error.

    SIGTERM and SIGINT stop the Streamlit child too (and so free the port): a service manager or a
    container stops `bench dashboard` with SIGTERM, which would otherwise leave Streamlit running."""
    path = Path(db).expanduser().resolve() if db is not None else default_db_path().resolve()
    note = "" if path.is_file() else " (no store there yet: the page says how to fill it)"
    print(f"dashboard on http://{host}:{port} reading {path}{note}; Ctrl-C stops it", flush=True)
    child = subprocess.Popen(streamlit_command(path, port, host), env={**os.environ, "BENCH_DB": str(path)})
    return wait_forwarding_stops(child)


class _Stop(Exception):
    """Raised by the signal handler to leave the wait for the child."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_GRACE_SECONDS = 10.0  # Streamlit's own shutdown closes sessions and the socket; it takes well under this


def wait_forwarding_stops(child: subprocess.Popen) -> int:
    """Wait for `child`; on SIGTERM or SIGINT, stop it (SIGTERM, then SIGKILL after a grace period) and return 0."""
    def stop(signum: int, frame: object) -> None:
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        return child.wait()
    except _Stop:
        for sig in STOP_SIGNALS:  # a second Ctrl-C while the child shuts down must not abandon it
            signal.signal(sig, signal.SIG_IGN)
        terminate(child)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def terminate(child: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to the child, SIGKILL if it is still there after `grace` seconds; reaped either way."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(db: str | Path, port: int | None = None, timeout: float = 120.0) -> Iterator[str]:
    """Run `bench dashboard --db DB --port PORT` in the background; yields its URL, stops it on exit."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    # A session of its own, so stopping it stops streamlit (bench's child) as well.
    server = subprocess.Popen([sys.executable, "-m", "negguide.bench.cli", "dashboard", "--db", str(db), "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(server, url, timeout, log)
        yield url
    finally:
        _stop(server)
        log.close()


def _wait_healthy(server: subprocess.Popen, url: str, timeout: float, log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the dashboard exited with code {server.returncode}: {log.read().decode(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the dashboard did not answer on {url} within {timeout:.0f} s")


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (bench and its streamlit child), SIGKILL to what lingers."""
    _signal_group(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10.0
    while _group_alive(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(server):
        _signal_group(server.pid, signal.SIGKILL)
    server.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(server: subprocess.Popen) -> bool:
    server.poll()  # reap bench itself, so only live members count
    try:
        os.killpg(server.pid, 0)
        return True
    except ProcessLookupError:
        return False
