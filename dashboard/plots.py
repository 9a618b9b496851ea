"""Charts for the dashboard and the static site: Altair (interactive, Vega-Lite) and Matplotlib figures; each takes plain data."""
from __future__ import annotations

from typing import Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from negguide.dashboard.data import kept_density
from negguide.results.palette import colour_scale, method_colour

# Figures are built with Figure() directly, not pyplot: no global state, nothing to close per rerun.
BAND_ALPHA = 0.25


def curves_figure(points: pd.DataFrame, quality_metric: str, threshold: float) -> Figure:
    """Forbidden share against the quality metric and against KL, one line per method setting (paper Fig. 4)."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, column, label in zip(axes, ("quality", "kl_classes"), (quality_metric, "KL of class histogram")):
        for line, rows in points[~points.unguided].groupby("line", sort=True):
            rows = rows.sort_values("scale")
            ax.plot(100 * rows.forbidden_rate, rows[column], "o-", color=method_colour(rows.method.iloc[0]), label=line)
            for _, r in rows.iterrows():
                ax.annotate(f"{r.scale:g}", (100 * r.forbidden_rate, r[column]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        unguided = points[points.unguided]
        if not unguided.empty:
            ax.plot(100 * unguided.forbidden_rate, unguided[column], "k*", markersize=14, label="unguided")
        ax.axvline(100 * threshold, color="grey", linestyle="--", linewidth=1, label=f"safety threshold {threshold:.0%}")
        ax.set_xlabel("forbidden share (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


# An SVG path of a five-pointed star (Vega-Lite accepts a path as a point shape): unguided sampling.
STAR = "M0,-1L0.24,-0.31L0.95,-0.31L0.38,0.12L0.59,0.81L0,0.38L-0.59,0.81L-0.38,0.12L-0.95,-0.31L-0.24,-0.31Z"
SAFETY_TICKS = [0, 0.1, 0.3, 1, 3, 10, 30, 100]  # percent, on the symlog axis
SYMLOG_CONSTANT = 0.1  # percent: linear below 0.1%, logarithmic above, so 0 forbidden samples stays on the axis


def method_colours(methods) -> alt.Scale:
    """The palette's colours (results.palette) as an Altair scale: a method has one colour in every chart."""
    domain, colours = colour_scale(methods)
    return alt.Scale(domain=domain, range=colours)


def _quality_scale(values: pd.Series) -> alt.Scale:
    """Log when the quality spans more than a decade (a method that over-steers), linear otherwise."""
    finite = values[np.isfinite(values)]
    spans = not finite.empty and finite.min() > 0 and finite.max() / finite.min() > 10
    return alt.Scale(type="log") if spans else alt.Scale(zero=False)


def curves_chart(points: pd.DataFrame, quality_metric: str, threshold: float, width: int = 420) -> alt.HConcatChart:
    """Interactive paper Fig. 4: forbidden share (symlog axis) against quality and against KL; 95% error bars both ways,
    each point labelled with its scale, one colour per method, unguided sampling as a star, the run on hover."""
    data = points.assign(forbidden_pct=100 * points.forbidden_rate, forbidden_low_pct=100 * points.forbidden_low,
                         forbidden_high_pct=100 * points.forbidden_high,
                         label=[("" if u else f"{s:g}") for s, u in zip(points.scale.fillna(0), points.unguided)])
    colour = alt.Color("method:N", title="method", scale=method_colours(data.method))
    tooltip = ["method", "setting", alt.Tooltip("scale:Q", format="g"), alt.Tooltip("forbidden_pct:Q", format=".2f", title="forbidden %"),
               alt.Tooltip("quality:Q", format=".4g", title=quality_metric), alt.Tooltip("kl_classes:Q", format=".4g", title="KL"), "samples", "run_id"]
    x_scale = alt.Scale(type="symlog", constant=SYMLOG_CONSTANT)
    x = alt.X("forbidden_pct:Q", title="forbidden share (%, symlog axis)", scale=x_scale, axis=alt.Axis(values=SAFETY_TICKS))
    charts = []
    for value, low, high, title in (("quality", "quality_low", "quality_high", quality_metric), ("kl_classes", "kl_low", "kl_high", "KL of class histogram")):
        y_scale = _quality_scale(pd.concat([data[value], data[low], data[high]]))
        y_title = title + (" (log axis)" if y_scale.type == "log" else "")
        base = alt.Chart(data).encode(x=x, color=colour)
        vertical = base.mark_rule(strokeWidth=1.5, opacity=0.8).encode(y=alt.Y(f"{low}:Q", scale=y_scale, title=y_title), y2=f"{high}:Q")
        horizontal = base.mark_rule(strokeWidth=1.5, opacity=0.8).encode(x="forbidden_low_pct:Q", x2="forbidden_high_pct:Q", y=f"{value}:Q")
        guided = base.transform_filter("!datum.unguided")
        lines = guided.mark_line(point=alt.OverlayMarkDef(size=50, filled=True)).encode(
            y=f"{value}:Q", detail="line:N", order="scale:Q", tooltip=tooltip)
        labels = guided.mark_text(dx=7, dy=-7, fontSize=10, align="left").encode(y=f"{value}:Q", text="label:N")
        star = base.transform_filter("datum.unguided").mark_point(shape=STAR, size=220, filled=True, opacity=1).encode(
            y=f"{value}:Q", tooltip=tooltip)
        rule = alt.Chart(pd.DataFrame({"x": [100 * threshold], "text": [f"threshold {threshold:.1%}"]}))
        threshold_rule = rule.mark_rule(strokeDash=[4, 4], color="grey").encode(x=alt.X("x:Q", scale=x_scale))
        threshold_text = rule.mark_text(align="left", dx=3, dy=-4, color="grey", baseline="bottom").encode(
            x=alt.X("x:Q", scale=x_scale), y=alt.value(0), text="text:N")
        charts.append(alt.layer(vertical, horizontal, lines, labels, star, threshold_rule, threshold_text)
                      .properties(width=width, height=320).interactive(name=f"zoom_{value}"))
    return alt.hconcat(*charts)


def overview_chart(rows: pd.DataFrame, width: int = 260) -> alt.FacetChart:
    """Each method's headline at matched safety on each task, with its 95% interval: one panel per task (own x scale)."""
    data = rows.assign(low=rows.low.fillna(rows.value), high=rows.high.fillna(rows.value),
                       axis_title=[f"{m} ({'lower' if lb else 'higher'} is better)" for m, lb in zip(rows.quality_metric, rows.lower_is_better)])
    colour = alt.Color("method:N", scale=method_colours(data.method), legend=None)
    base = alt.Chart().encode(y=alt.Y("method:N", title=None), color=colour)
    bars = base.mark_rule(strokeWidth=2).encode(x=alt.X("low:Q", title="headline at matched safety (95% interval)", scale=alt.Scale(zero=False)),
                                                x2="high:Q")
    dots = base.mark_point(filled=True, size=70).encode(x="value:Q", tooltip=["task", "method", "quality_metric", alt.Tooltip("value:Q", format=".4g"),
                                                                          alt.Tooltip("low:Q", format=".4g"), alt.Tooltip("high:Q", format=".4g"),
                                                                          "rank", alt.Tooltip("scale:Q", format="g"), "run_id"])
    ranks = base.mark_text(align="left", dx=8, dy=-8, fontSize=10).encode(x="value:Q", text=alt.Text("rank:N"))
    return (alt.layer(bars, dots, ranks, data=data).properties(width=width, height=alt.Step(22))
            .facet(facet=alt.Facet("task:N", title=None), columns=3).resolve_scale(x="independent"))


def class_histogram_chart(shares: np.ndarray, ideal: np.ndarray, removed: int | None) -> alt.LayerChart:
    """Generated class shares (the removed class in red) against the ideal histogram (black ticks)."""
    data = pd.DataFrame({"class": np.arange(len(shares)), "share": shares, "ideal": ideal,
                         "kind": ["removed class" if i == removed else "kept class" for i in range(len(shares))]})
    base = alt.Chart(data).encode(x=alt.X("class:O", title="class (red: removed)"))
    bars = base.mark_bar().encode(y=alt.Y("share:Q", title="share of samples"), tooltip=["class", alt.Tooltip("share:Q", format=".3f"),
                                                                                        alt.Tooltip("ideal:Q", format=".3f")],
                                  color=alt.Color("kind:N", scale=alt.Scale(domain=["kept class", "removed class"], range=["#4e79a7", "#e15759"]),
                                                  title=None))
    ticks = base.mark_tick(color="black", thickness=2, size=30).encode(y="ideal:Q")
    return alt.layer(bars, ticks).properties(width=360, height=220)


def samples_chart(x: np.ndarray, method: str, limit: int = 1000) -> alt.Chart:
    """Point samples of an exact task: a histogram (1D) or a scatter (2D), in the method's colour."""
    x = x[:limit]
    colour = method_colour(method)
    if x.shape[1] == 1:
        data = pd.DataFrame({"x": x[:, 0]})
        return alt.Chart(data).mark_bar(color=colour).encode(x=alt.X("x:Q", bin=alt.Bin(maxbins=60), title="x"),
                                                             y=alt.Y("count():Q", title="samples")).properties(width=420, height=240)
    data = pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1]})
    return alt.Chart(data).mark_circle(size=10, opacity=0.5, color=colour).encode(x="x1:Q", y="x2:Q").properties(width=360, height=360)


def class_histogram_figure(shares: np.ndarray, ideal: np.ndarray, removed: int | None) -> Figure:
    """Generated class shares against the ideal histogram (0 for the removed class)."""
    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    index = np.arange(len(shares))
    is_removed = index == removed
    ax.bar(index[~is_removed], shares[~is_removed], color="tab:blue", label="generated")
    ax.bar(index[is_removed], shares[is_removed], color="tab:red", label="generated, removed class")
    ax.step(np.append(index, index[-1] + 1) - 0.5, np.append(ideal, ideal[-1]), where="post", color="black", label="ideal")
    ax.set_xticks(index)
    ax.set_xlabel("class (red: removed)")
    ax.set_ylabel("share of samples")
    fig.legend(loc="outside upper center", ncols=2, fontsize=8)
    return fig


def trace_figure(bands: Mapping[str, pd.DataFrame], ylabel: str, total_steps: int | None = None) -> Figure:
    """Mean and q05-q95 band of traced quantities over the denoising steps; noise grows to the right (paper Fig. 12)."""
    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    for label, band in bands.items():
        (line,) = ax.plot(band.t, band["mean"], label=f"{label} (mean)")
        ax.fill_between(band.t, band.q05, band.q95, color=line.get_color(), alpha=BAND_ALPHA, label=f"{label} (q05-q95)")
    ax.set_xlabel("timestep t (noise increases to the right)")
    ax.set_ylabel(ylabel)
    if total_steps:
        ax.set_xlim(0, total_steps)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def points_figure(samples: Mapping[str, np.ndarray], details: dict, removed: int | None) -> Figure:
    """Side-by-side panels of point samples on shared axes: histograms (1D, with the target density) or scatters (2D)."""
    fig = Figure(figsize=(5.5 * len(samples), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(samples), sharex=True, sharey=True))
    stacked = np.concatenate(list(samples.values()))
    dim = stacked.shape[1]
    for ax, (label, x) in zip(axes, samples.items()):
        if dim == 1:
            _histogram(ax, x[:, 0], stacked[:, 0], details, removed)
        else:
            _scatter(ax, x, details, removed)
        ax.set_title(f"{label} ({len(x)} samples)", fontsize=10)
    return fig


def _histogram(ax, x: np.ndarray, everything: np.ndarray, details: dict, removed: int | None) -> None:
    bins = np.linspace(everything.min(), everything.max(), 61)  # the same bins in every panel
    ax.hist(x, bins=bins, density=True, alpha=0.7, label="samples")
    xs = np.linspace(bins[0], bins[-1], 400)
    density = kept_density(details, removed, xs)
    if density is not None:
        ax.plot(xs, density, "k--", linewidth=1, label="target (kept modes)")
    ax.set_xlabel("x")
    ax.legend(fontsize=8)


def _scatter(ax, x: np.ndarray, details: dict, removed: int | None) -> None:
    ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.5)
    for i, mean in enumerate(details.get("means", [])):
        ax.plot(mean[0], mean[1], "x", color="tab:red" if i == removed else "black", markersize=10, markeredgewidth=2)
    ax.set_aspect("equal")
    ax.set_xlabel("x1 (x: mode centres, red: removed)")
    ax.set_ylabel("x2")


def paired_shift_figure(a: np.ndarray, b: np.ndarray, labels: Sequence[str]) -> Figure:
    """Where sample i of A went in B, for points drawn on the same seeds (1D: B against A; 2D: A-to-B segments)."""
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    fig = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = fig.subplots()
    if a.shape[1] == 1:
        ax.scatter(a[:, 0], b[:, 0], s=3, alpha=0.5)
        low, high = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        ax.plot([low, high], [low, high], "k--", linewidth=1)
        ax.set_xlabel(f"A: {labels[0]}")
        ax.set_ylabel(f"B: {labels[1]}")
        ax.set_title("sample by sample (on the diagonal: unchanged)", fontsize=10)
    else:
        ax.add_collection(LineCollection(np.stack([a[:, :2], b[:, :2]], axis=1), colors="grey", linewidths=0.5, alpha=0.4))
        ax.scatter(a[:, 0], a[:, 1], s=3, color="lightgrey", label=f"A: {labels[0]}")
        ax.scatter(b[:, 0], b[:, 1], s=3, color="tab:blue", label=f"B: {labels[1]}")
        ax.set_aspect("equal")
        ax.set_title("each segment joins sample i of A to sample i of B", fontsize=10)
        ax.legend(fontsize=8)
    return fig
