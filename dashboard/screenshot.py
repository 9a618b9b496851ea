"""Screenshots of the real dashboard in headless Chromium, for the docs.

    python -m negguide.dashboard.screenshot --db bench-data/bench.duckdb --out docs/leaderboard.png

Streamlit renders client-side over a websocket, which Chromium's --virtual-time-budget does not
wait for; so this drives Chromium over its DevTools protocol and shoots once the script has run.
"""
from __future__ import annotations

import argparse
import base64
import json
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from websockets.sync.client import connect  # a dependency of streamlit itself

from negguide.dashboard.launch import serving

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--remote-debugging-port=0"]
# The page's size once Streamlit has finished a script run, the page shows `text`, no element is a
# loading placeholder or stale, every table has its cells and every image has loaded; -1 before that.
READY_JS = """(() => {{
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.dataset.testScriptState !== 'notRunning' || !document.body.innerText.includes({text})) return -1;
  if (document.querySelector('[data-testid^="stSkeleton"], [data-stale="true"]')) return -1;
  // a table in a collapsed expander (a closed <details>) is not drawn until it opens: wait only for the others
  const tables = Array.from(document.querySelectorAll('[data-testid="stDataFrame"]')).filter(t => !t.closest('details:not([open])'));
  const drawn = tables.every(t => t.querySelector('td[role="gridcell"]')) && Array.from(document.images).every(i => i.complete);
  return drawn ? document.documentElement.outerHTML.length : -1;
}})()"""

class Browser:
    """One headless Chromium page driven over the DevTools protocol."""

    def __init__(self, width: int = 1400, height: int = 1000, chromium: str = CHROMIUM):
        self.profile = tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True)  # late child writes
        self.process = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={self.profile.name}", f"--window-size={width},{height}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.resources = ExitStack()
        self.next_id = 0
        self.events: list[dict] = []  # DevTools events seen between replies (console messages, exceptions)
        try:
            self.socket = self.resources.enter_context(connect(self._page_socket_url(), max_size=None, open_timeout=30))
        except BaseException:
            self._stop_chromium()
            raise

    def _page_socket_url(self, timeout: float = 30.0) -> str:
        """The page target's websocket, read from the port file Chromium writes into its profile."""
        port_file = Path(self.profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_file.is_file() and port_file.read_text().strip():
                port = port_file.read_text().split()[0]
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as reply:
                    pages = [t for t in json.load(reply) if t["type"] == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.2)
        raise RuntimeError(f"chromium did not open its DevTools port within {timeout:.0f} s")

    def call(self, method: str, **params: object) -> dict:
        """Send one DevTools command and return its result (events in between are skipped)."""
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if "method" in message:
                self.events.append(message)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> object:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True).get("result", {}).get("value")

    def open(self, url: str, ready_text: str, timeout: float = 90.0, settle: float = 2.0) -> None:
        """Load `url` and wait until the app shows `ready_text` and the page has not changed for `settle` seconds."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        size, since = -1, time.monotonic()
        # Components (the table, charts) load after the script's last message: wait for the page to stand still.
        while size < 0 or time.monotonic() - since < settle:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not show {ready_text!r} within {timeout:.0f} s")
            time.sleep(0.25)
            now = self.evaluate(READY_JS.format(text=json.dumps(ready_text)))
            if now != size:
                size, since = now, time.monotonic()

    def load(self, url: str, timeout: float = 60.0) -> None:
        """Navigate to a plain page and wait until it has loaded."""
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'", timeout)

    def wait_for(self, condition: str, timeout: float = 60.0) -> None:
        """Poll a JavaScript condition until it holds."""
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"!!({condition})"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{condition!r} did not hold within {timeout:.0f} s")
            time.sleep(0.25)

    def console_errors(self) -> list[str]:
        """Console errors and uncaught exceptions since the page's Runtime and Log domains were enabled."""
        self.evaluate("0")  # drain the events queued so far
        errors = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                errors.append(str(params.get("exceptionDetails", {}).get("exception", {}).get("description") or params))
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(f"{params['entry'].get('text')} ({params['entry'].get('url', '')})")
        return errors

    def dom(self) -> str:
        return str(self.evaluate("document.documentElement.outerHTML"))

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.resources.close()
        self._stop_chromium()

    def _stop_chromium(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.profile.cleanup()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def page_url(base: str, page: str, task: str | None) -> str:
    """A link to one page (and task) of the dashboard."""
    return f"{base}/?{urllib.parse.urlencode({'page': page, **({'task': task} if task else {})})}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="DuckDB store the dashboard reads")
    parser.add_argument("--out", type=Path, default=Path("docs/leaderboard.png"), help="PNG to write (default docs/leaderboard.png)")
    parser.add_argument("--page", default="Leaderboard", help="dashboard page: Overview, Leaderboard, Curves, Method, ... (default Leaderboard)")
    parser.add_argument("--task", help="task the page shows (default: the dashboard's first)")
    parser.add_argument("--wait-text", default="How this table is ranked", help="text that shows the page is rendered")
    parser.add_argument("--window-size", default="1400,1000", help="browser window WIDTH,HEIGHT in pixels (default 1400,1000)")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.window_size.split(","))
    with serving(args.db) as base, Browser(width, height) as browser:
        browser.open(page_url(base, args.page, args.task), args.wait_text)
        browser.screenshot(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
