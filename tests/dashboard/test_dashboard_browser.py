"""The real dashboard (`bench dashboard`) rendered by headless Chromium shows the leaderboard's methods.

Chromium is driven over its DevTools protocol (dashboard.screenshot.Browser) rather than with
`--dump-dom --virtual-time-budget`: Streamlit renders over a websocket that virtual time does not wait
for, and one browser polled in place is far cheaper on a busy machine than a browser launch per poll.
"""
from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest

from negguide.bench.cli import main as bench_main
from negguide.dashboard.launch import serving
from negguide.dashboard.screenshot import Browser, page_url
from negguide.results.leaderboard import leaderboard_table
from negguide.results.store import Store

CHROMIUM = Path("/usr/bin/chromium")
TASK = "gmm1d-remove-1"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)"),
]
# Streamlit's table draws on a canvas and keeps an accessible copy of its visible cells in the DOM.
CELL = re.compile(r'<td role="gridcell"[^>]*>([^<]*)</td>')


def rendered_cells(browser: Browser, url: str, expected: set[str], timeout: float = 240.0) -> list[str]:
    """Table cells of the page once the app has run, polled until they include `expected` or time is up."""
    browser.open(url, "How this table is ranked", timeout=timeout)
    deadline = time.monotonic() + 30.0
    cells = CELL.findall(browser.dom())
    while not expected <= set(cells) and time.monotonic() < deadline:
        time.sleep(0.5)
        cells = CELL.findall(browser.dom())
    return cells


def test_leaderboard_renders_in_a_browser(tmp_path):
    db = tmp_path / "bench.duckdb"
    for method, scale in (("none", "1"), ("np", "2"), ("dng", "5")):
        assert bench_main(["run", "--method", method, "--task", TASK, "--param", f"scale={scale}", "--samples", "256",
                           "--steps", "50", "--db", str(db), "--no-progress"]) == 0
    expected = set(leaderboard_table(Store(db), TASK, exploratory=True).method)
    assert expected == {"none", "np", "dng"}
    with serving(db) as url, Browser(1400, 1000) as browser:
        cells = rendered_cells(browser, page_url(url, "Leaderboard", TASK), expected)
        browser.screenshot(tmp_path / "leaderboard.png")  # kept for a look when this fails
    assert expected <= set(cells), f"methods not rendered; table cells seen: {cells[:40]}"
    with pytest.raises(OSError):  # the server is stopped once the block ends
        urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
