"""A static export of the whole leaderboard: plain HTML pages, interactive Vega-Lite charts, sample grids.

    bench export-site DIR [--db PATH]
    python -m negguide.dashboard.site DIR --db bench-data/bench.duckdb

Pages: index.html (every task at matched safety, win rate and mean rank), tasks/T.html (the matched-safety
table for every calibrated target, the curves, every run ranked), methods/M.html (a method across tasks),
runs/ID.html (metrics, parameters, provenance, sample grid or samples, class histogram, traces). Every table
comes with its CSV and JSON. Links are relative, so DIR can be served from any static host or opened from disk.
Charts are Altair specs drawn by vega-embed: with `vl-convert-python` installed its bundle (about 0.9 MB) is
written once to assets/ and the site works offline; without it the pages load vega from a CDN.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import altair as alt
import pandas as pd

from negguide.dashboard import data, plots
from negguide.results.store import Store

ASSETS = "assets"
EMBED_JS = "vega-embed.js"
CDN = "https://cdn.jsdelivr.net/npm"
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1460px; padding: 0 20px 40px; color: #222; }
nav { padding: 10px 0; border-bottom: 1px solid #ddd; margin-bottom: 12px; }
nav a { margin-right: 14px; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 3px 8px; text-align: left; vertical-align: top; white-space: nowrap; }
th { background: #f5f5f5; }
.caption, .downloads { color: #666; font-size: 12px; }
.chart { margin: 8px 0 16px; }
img.grid { max-width: 560px; image-rendering: pixelated; border: 1px solid #ddd; }
.columns { display: flex; gap: 32px; flex-wrap: wrap; }
pre { background: #f7f7f7; padding: 8px; font-size: 12px; max-width: 680px; overflow-x: auto; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; }
"""


@dataclass
class Site:
    """The export in progress: where it goes, how charts load, and the files written so far."""

    root: Path
    offline: bool
    written: list[Path] = field(default_factory=list)
    charts: int = 0

    def write(self, relative: str, text: str | bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text, encoding="utf-8")
        self.written.append(path)
        return path


# ---- HTML pieces --------------------------------------------------------------------------

def up(depth: int) -> str:
    """The relative prefix from a page `depth` folders down back to the site's root."""
    return "../" * depth


def file_link(link: str, depth: int) -> tuple[str, str]:
    """A dashboard link (`?page=...`) as the site's relative file link and its text."""
    query = {k: v[0] for k, v in parse_qs(urlparse(link).query).items()}
    page = query.get("page")
    if page == "Run detail":
        return f"{up(depth)}runs/{query['run']}.html", query["run"][:8]
    if page == "Method":
        return f"{up(depth)}methods/{query['method']}.html", query["method"]
    return f"{up(depth)}tasks/{query['task']}.html", query.get("task", "")


def html_table(view: pd.DataFrame, depth: int, link_columns: tuple[str, ...] = ("run", "page", "leaderboard")) -> str:
    """A table of text cells; dashboard link columns become relative links to the site's pages."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in view.columns)
    rows = []
    for _, row in view.iterrows():
        cells = []
        for column, value in row.items():
            if column in link_columns and isinstance(value, str) and value.startswith("?"):
                href, text = file_link(value, depth)
                cells.append(f'<td><a href="{html.escape(href)}">{html.escape(text)}</a></td>')
            elif isinstance(value, bool):
                cells.append(f"<td>{'yes' if value else 'no'}</td>")
            else:
                cells.append(f"<td>{html.escape(str(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def table_block(site: Site, view: pd.DataFrame, depth: int, name: str, raw: pd.DataFrame | None = None) -> str:
    """A table and its CSV/JSON files (machine-readable: numbers, not text with intervals, where given)."""
    frame = data.downloadable(raw if raw is not None else view)
    site.write(f"{ASSETS}/tables/{name}.csv", frame.to_csv(index=False))
    site.write(f"{ASSETS}/tables/{name}.json", frame.to_json(orient="records", indent=1, default_handler=str))
    prefix = f"{up(depth)}{ASSETS}/tables/{html.escape(name)}"
    return html_table(view, depth) + f'<div class="downloads">download: <a href="{prefix}.csv">CSV</a> · <a href="{prefix}.json">JSON</a></div>'


def chart_block(site: Site, chart: alt.TopLevelMixin) -> str:
    """A Vega-Lite chart drawn by vega-embed into its own div (the spec inlined in the page)."""
    site.charts += 1
    div = f"chart{site.charts}"
    spec = json.dumps(chart.to_dict())
    return (f'<div class="chart" id="{div}"></div>\n'
            f"<script>vegaEmbed('#{div}', {spec}, {{actions: false}}).catch(e => console.error(e));</script>")


def scripts(site: Site, depth: int) -> str:
    """The script tags that define vegaEmbed: the bundle in assets/ (offline) or vega from a CDN."""
    if site.offline:
        return f'<script src="{up(depth)}{ASSETS}/{EMBED_JS}"></script>'
    return "".join(f'<script src="{CDN}/{name}@{version}"></script>' for name, version in
                   (("vega", alt.VEGA_VERSION), ("vega-lite", alt.VEGALITE_VERSION), ("vega-embed", alt.VEGAEMBED_VERSION)))


def page(site: Site, relative: str, title: str, body: str) -> Path:
    """One page: the nav (relative links), the body, the chart scripts."""
    depth = relative.count("/")
    nav = f'<nav><a href="{up(depth)}index.html">Overview</a><a href="{up(depth)}index.html#tasks">Tasks</a><a href="{up(depth)}index.html#methods">Methods</a></nav>'
    document = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
                f'<link rel="stylesheet" href="{up(depth)}{ASSETS}/style.css">{scripts(site, depth)}</head>\n'
                f"<body>{nav}<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")
    return site.write(relative, document)


def caption(text: str) -> str:
    return f'<p class="caption">{html.escape(text)}</p>'


def method_legend(methods: list[str]) -> str:
    """The palette's colours, as the charts use them."""
    from negguide.results.palette import method_colour

    items = "".join(f'<span style="margin-right:12px"><span class="swatch" style="background:{method_colour(m)}"></span>{html.escape(m)}</span>'
                    for m in sorted(set(methods)))
    return f"<p>{items}</p>"


# ---- pages --------------------------------------------------------------------------------

def index_page(site: Site, store: Store, board: pd.DataFrame) -> None:
    tasks = sorted(board.task.unique())
    parts = ["<p>Negative guidance methods compared at matched safety: each method at the smallest guidance scale whose "
             "forbidden share's upper 95% bound is at most the target, ranked by the task's quality metric. Values are "
             "<code>value [95% CI]</code>; rank groups (<code>1-3</code>) are the best and worst rank the intervals allow.</p>"]
    targets = data.overview_targets(store, tasks)
    if not targets:
        parts.append("<p>No method is calibrated on any task yet (<code>bench calibrate</code>); each task page ranks all its runs.</p>")
    if targets:
        parts.append("<p>Targets: " + " · ".join(f'<a href="#target-{data.target_label(t)}">at most {data.target_label(t)}</a>' for t in targets) + "</p>")
    for target in targets:
        rows = data.overview_rows(store, tasks, target)
        if rows.empty:
            continue
        label = data.target_label(target)
        summary = data.overview_summary(rows)
        parts += [f'<h2 id="target-{label}">Forbidden share at most {label}</h2>',
                  table_block(site, summary, 0, f"overview-summary-{label}", raw=summary.drop(columns=["page"])),
                  caption("Win rate (as HELM's mean win rate, with intervals): on each task, the share of the other methods whose 95% "
                          "interval of the quality metric lies entirely worse (an overlap counts half), averaged over the tasks a method "
                          "shares with another. Mean rank: the mean midpoint of its rank groups."),
                  "<h3>Headline per task</h3>", table_block(site, data.overview_grid(rows, list(summary.method)), 0, f"overview-{label}", raw=rows),
                  caption("Each cell: the task's quality metric (↓ lower is better, ↑ higher) value [95% CI] #rank group; — where the "
                          "method is not calibrated at this target."),
                  method_legend(list(rows.method)), chart_block(site, plots.overview_chart(rows)),
                  caption("Dots: each method's headline; bars: its 95% interval; labels: its rank group. Each panel has its own axis.")]
    parts += ['<h2 id="tasks">Tasks</h2>', table_block(site, data.tasks_view(board), 0, "tasks")]
    methods = pd.DataFrame({"method": sorted(board.method.unique())})
    methods["runs"] = [int((board.method == m).sum()) for m in methods.method]
    methods["page"] = [data.method_link(m) for m in methods.method]
    parts += ['<h2 id="methods">Methods</h2>', table_block(site, methods, 0, "methods", raw=methods.drop(columns=["page"]))]
    page(site, "index.html", "Negative guidance leaderboard", "\n".join(parts))


def task_page(site: Site, store: Store, board: pd.DataFrame, task: str) -> None:
    info = data.task_info(store, task)
    quality = info.quality_metric
    parts = [f"<p>{_markdown_bold(data.headline_paragraph(info))}</p>", "<h2>At matched safety</h2>"]
    targets = data.calibrated_targets(store, task)
    tables = {t: data.matched(store, task, t) for t in targets}
    if not targets:
        parts.append(caption(f"No calibrated run yet: bench calibrate --method M --task {task} --target {info.threshold}"))
    for target, table in tables.items():
        label = data.target_label(target)
        defaults = data.method_defaults(store, list(table.method.unique())) if not table.empty else {}
        parts += [f"<h3>Forbidden share at most {label}</h3>",
                  table_block(site, data.matched_view(table, quality, defaults), 1, f"{task}-matched-{label}", raw=table)]
    if len(targets) > 1:
        parts += ["<h3>Every calibrated target</h3>", table_block(site, data.targets_at_a_glance(tables, quality), 1, f"{task}-targets")]
    rows = data.filter_board(board, info)
    points = data.curve_points(rows, quality)
    if not points.empty and points.forbidden_rate.notna().any():
        parts += ["<h2>Safety vs quality</h2>",
                  caption(f"One colour per method; a line joins one method setting across its guidance scales, each point labelled with "
                          f"its scale; the star is unguided sampling; the dashed line is the task's threshold ({info.threshold:.1%}). The "
                          f"forbidden-share axis is symlog (linear below 0.1%); error bars are 95% intervals. Hover a point for its run."),
                  chart_block(site, plots.curves_chart(points, quality, info.threshold))]
    view, constant, others = data.leaderboard_view(rows, quality)
    shared = "; ".join(f"{k} {v}" for k, v in constant.items())
    parts += ["<h2>All runs</h2>", f"<p>{len(view)} runs, {int(rows.safe.sum())} safe." + (f" Every run: {html.escape(shared)}." if shared else "") + "</p>",
              table_block(site, view, 1, f"{task}-runs", raw=rows)]
    if len(others.columns) > 3:
        parts += ["<h3>The task's other metrics</h3>", table_block(site, others, 1, f"{task}-other-metrics", raw=rows)]
    page(site, f"tasks/{task}.html", f"Leaderboard · {task}", "\n".join(parts))


def method_page(site: Site, store: Store, board: pd.DataFrame, method: str) -> None:
    tasks = sorted(board.task.unique())
    info = store.info("method_info", method)
    defaults = ", ".join(f"{k}={v}" for k, v in sorted(info.get("defaults", {}).items())) or "none"
    parts = [f"<p>{html.escape(info.get('summary', ''))}. Predictions per step: {html.escape(', '.join(info.get('needs', [])) or 'none')}; "
             f"defaults: {html.escape(defaults)}.</p>" if info else "",
             "<h2>At matched safety, every task and target</h2>"]
    headlines = data.method_headlines(store, tasks, method)
    parts.append(table_block(site, headlines, 1, f"{method}-headlines") if not headlines.empty else caption(f"{method} is not calibrated on any task."))
    qualities = {t: data.task_info(store, t).quality_metric for t in tasks}
    parts += ["<h2>Every run</h2>", table_block(site, data.method_runs(board, method, qualities), 1, f"{method}-runs", raw=board[board.method == method]),
              caption("Rank: the run's rank group among all runs of its task.")]
    page(site, f"methods/{method}.html", f"Method · {method}", "\n".join(parts))


def run_page(site: Site, store: Store, row: pd.Series, info: data.TaskInfo, runs_in_task: int) -> None:
    metrics = [m for m in data.metric_columns(pd.DataFrame([row]), info.metrics) if pd.notna(row.get(m))]
    metric_view = pd.DataFrame({"metric": metrics, "value [95% CI]": [data.with_interval(row.get(m), *data.interval_of(row, m)) for m in metrics]})
    defaults = store.info("method_info", row.method).get("defaults", {})
    left = ["<h2>Metrics</h2>", table_block(site, metric_view, 1, f"run-{row.run_id}-metrics"),
            caption(f"rank {data.rank_text(row['rank'])} of {runs_in_task} in {row.task}; {int(row.samples)} samples, {int(row.steps)} steps, "
                    f"protocol {row.protocol}; safe: {'yes' if row.safe else 'no'} (upper end of the forbidden share's interval at most "
                    f"{info.threshold:.1%})"),
            "<h2>Parameters</h2>", html_table(data.parameters_view(row, defaults), 1),
            "<h2>Provenance</h2>", html_table(_key_values(published_provenance(row)), 1)]
    right = ["<h2>Samples</h2>", _samples_block(site, row)]
    counts = store.class_counts(row.run_id)
    if not counts.empty:
        shares = data.class_shares(counts)
        ideal = data.ideal_shares(len(shares), info.removed, info.details.get("weights"))
        right += ["<h2>Class histogram</h2>", chart_block(site, plots.class_histogram_chart(shares, ideal, info.removed)),
                  caption("Bars: generated shares (red: the removed class); black ticks: the ideal histogram.")]
    traces = store.traces(row.run_id)
    for name, title in (("guidance_scale", "Guidance scale over the steps"), ("posterior", "Posterior of the removed class")):
        if not traces.empty and name in set(traces.name):
            right += [f"<h2>{title}</h2>", chart_block(site, trace_chart(data.trace_band(traces, name), title.split(" over")[0].lower()))]
    body = f"<p>{html.escape(row.method)} ({html.escape(row.setting)}) on <a href=\"../tasks/{html.escape(row.task)}.html\">{html.escape(row.task)}</a></p>"
    body += f'<div class="columns"><div>{"".join(left)}</div><div>{"".join(right)}</div></div>'
    page(site, f"runs/{row.run_id}.html", f"Run {row.run_id[:8]} · {row.method}", body)


def trace_chart(band: pd.DataFrame, label: str) -> alt.LayerChart:
    """A traced quantity's mean and q05-q95 band over the steps (noise grows to the right; paper Fig. 12)."""
    base = alt.Chart(band).encode(x=alt.X("t:Q", title="timestep t (noise increases to the right)"))
    area = base.mark_area(opacity=0.25).encode(y=alt.Y("q05:Q", title=label), y2="q95:Q")
    return alt.layer(area, base.mark_line().encode(y="mean:Q")).properties(width=360, height=200)


def published_provenance(row: pd.Series) -> dict:
    """The run's provenance without the exporting machine's folders (its artifacts are copied beside the page)."""
    return {k: v for k, v in data.provenance(row).items() if k != "artifacts_dir"}


def _key_values(values: dict) -> pd.DataFrame:
    """A dict as a two-column table; nested values as compact JSON."""
    return pd.DataFrame({"field": list(values), "value": [json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v) for v in values.values()]})


def _samples_block(site: Site, row: pd.Series) -> str:
    """The run's grid PNG copied beside its page, else a chart of its point samples, else a note."""
    grid = data.grid_path(row.artifacts_dir)
    if grid is not None:
        target = site.root / "runs" / row.run_id / "grid.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(grid, target)
        site.written.append(target)
        return f'<img class="grid" src="{html.escape(row.run_id)}/grid.png" alt="first samples of {html.escape(row.method)}">'
    samples = data.load_samples(row.artifacts_dir)
    if samples is not None and samples.ndim == 2:
        return chart_block(site, plots.samples_chart(samples, row.method)) + caption(f"the first {min(len(samples), 1000)} samples")
    return caption("The run's samples are not on the machine that exported this site.")


def _markdown_bold(text: str) -> str:
    """The headline paragraph's **bold** and *italic* as HTML (the rest escaped)."""
    import re

    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    escaped = re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*(.+?)\*", r"<i>\1</i>", escaped)


# ---- the export ---------------------------------------------------------------------------

def embed_bundle() -> str | None:
    """vega-embed with vega and vega-lite in one script, from vl-convert (None when it is not installed)."""
    try:
        import vl_convert
        from altair.utils._importers import vl_version_for_vl_convert
    except ImportError:
        return None
    return vl_convert.javascript_bundle(vl_version=vl_version_for_vl_convert())


def export_site(db_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the static leaderboard of the store at `db_path` into `out_dir`; returns the files written."""
    store = Store(db_path)
    board = data.load_board(store)
    bundle = embed_bundle()
    site = Site(Path(out_dir), offline=bundle is not None)
    site.write(f"{ASSETS}/style.css", STYLE)
    if bundle is not None:
        site.write(f"{ASSETS}/{EMBED_JS}", bundle)
    if board.empty:
        page(site, "index.html", "Negative guidance leaderboard", f"<p>The store has no runs yet: <code>{html.escape(data.FIRST_RUN_COMMAND)}</code></p>")
        return site.written
    index_page(site, store, board)
    for task in sorted(board.task.unique()):
        task_page(site, store, board, task)
        info = data.task_info(store, task)
        rows = board[board.task == task]
        for _, row in rows.iterrows():
            run_page(site, store, row, info, len(rows))
    for method in sorted(board.method.unique()):
        method_page(site, store, board, method)
    return site.written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench export-site", description="write the whole leaderboard as a static HTML site",
                                     epilog="example: bench export-site site/ --db bench-data/bench.duckdb && python -m http.server -d site/")
    parser.add_argument("dir", metavar="DIR", type=Path, help="folder to write the site into (created; files in it are overwritten)")
    parser.add_argument("--db", type=Path, help="DuckDB store (default: $BENCH_DB or ./bench-data/bench.duckdb)")
    args = parser.parse_args(argv)
    db = args.db if args.db is not None else data.resolve_db_path([], os.environ)
    written = export_site(db, args.dir)
    pages = sum(1 for p in written if p.suffix == ".html")
    charts = "charts offline (assets/vega-embed.js)" if (args.dir / ASSETS / EMBED_JS).is_file() else \
        "charts load vega from a CDN (pip install vl-convert-python to embed it)"
    print(f"wrote {pages} pages, {len(written)} files to {args.dir}; {charts}; open {args.dir / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
