"""`bench dashboard` stops its Streamlit child on SIGTERM and SIGINT, and the port is free again."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from negguide.dashboard.launch import free_port

STARTUP_SECONDS = 120.0


def _children(pid: int) -> list[int]:
    """Live child processes of `pid` (from /proc: no psutil needed)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        found += [int(c) for c in children]
    return found


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan may wait for a reaper that a container lacks)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_healthy(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert server.poll() is None, f"bench dashboard exited early ({server.returncode})"
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the dashboard did not answer on {url}")


def _port_free(port: int) -> bool:
    """Whether a server could listen on the port now (SO_REUSEADDR, as servers bind: closed connections in
    TIME_WAIT do not count, a listener still does)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
            return True
        except OSError:
            return False


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_streamlit_and_frees_the_port(tmp_path, stop):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "negguide.bench.cli", "dashboard", "--db", str(tmp_path / "bench.duckdb"), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", server)
        children = _children(server.pid)
        assert children, "bench dashboard should run streamlit as its child"
        os.kill(server.pid, stop)  # bench only, as a service manager would; not its process group
        assert server.wait(30) == 0
        deadline = time.monotonic() + 15
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(c) for c in children), "the streamlit child outlived bench dashboard"
        assert _port_free(port), f"port {port} is still held"
    finally:
        if server.poll() is None:  # the test failed midway: stop what it started
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
