"""`bench export-site DIR`: the whole leaderboard as static HTML with relative links, tables as CSV/JSON, sample grids."""
from __future__ import annotations

import json
import re
from pathlib import Path

from negguide.dashboard import site
from negguide.results.store import Store

GMM1D, IMAGES = "gmm1d-remove-1", "toy-images-remove-3"  # as in conftest.py's store
LINK = re.compile(r'(?:href|src)="([^"]+)"')


def test_export_writes_every_page_with_relative_links(store_path, tmp_path, capsys):
    out = tmp_path / "site"
    assert site.main([str(out), "--db", str(store_path)]) == 0
    assert "pages" in capsys.readouterr().out
    store = Store(store_path)
    runs = store.runs()
    expected = {"index.html", *(f"tasks/{t}.html" for t in runs.task.unique()), *(f"methods/{m}.html" for m in runs.method.unique()),
                *(f"runs/{r}.html" for r in runs.run_id)}
    pages = {str(p.relative_to(out)) for p in out.rglob("*.html")}
    assert expected == pages
    for path in out.rglob("*.html"):
        text = path.read_text()
        assert str(tmp_path) not in text and str(store_path.parent) not in text, f"{path}: an absolute path of this machine"
        for link in LINK.findall(text):
            if link.startswith(("data:", "#", site.CDN)):
                continue
            assert not link.startswith(("/", "http")), f"{path}: {link} is not relative"
            assert (path.parent / link.split("#")[0]).resolve().is_file(), f"{path}: {link} leads nowhere"
        assert "NaN" not in re.sub(r"<script.*?</script>", "", text, flags=re.S) and "None" not in text.replace("None of", "")


def test_pages_hold_the_tables_charts_and_grids(store_path, tmp_path):
    out = tmp_path / "site"
    written = site.export_site(store_path, out)
    assert all(p.is_file() for p in written)
    index = (out / "index.html").read_text()
    assert "Forbidden share at most 5%" in index and "Forbidden share at most 2%" in index and "win rate" in index
    task = (out / "tasks" / f"{GMM1D}.html").read_text()
    assert task.count("<table>") >= 4 and "vegaEmbed(" in task and "symlog" in task  # 2 targets, glance, runs; the curves
    grid = out / "runs" / "toyimages-dng" / "grid.png"
    source = Path(Store(store_path).runs().set_index("run_id").loc["toyimages-dng", "artifacts_dir"]) / "grid.png"
    assert grid.read_bytes() == source.read_bytes()
    run = (out / "runs" / "toyimages-dng.html").read_text()
    assert 'src="toyimages-dng/grid.png"' in run and "Class histogram" in run and "Provenance" in run
    tables = sorted((out / site.ASSETS / "tables").glob("*.json"))
    assert tables and all(isinstance(json.loads(t.read_text()), list) and t.with_suffix(".csv").is_file() for t in tables)
    if site.embed_bundle() is not None:  # offline: vega-embed written once, beside the pages
        assert (out / site.ASSETS / site.EMBED_JS).stat().st_size > 100_000 and site.CDN not in task
