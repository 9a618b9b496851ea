"""Matplotlib figures for the dashboard; each function takes plain data and returns a Figure."""
from __future__ import annotations

from typing import Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from negguide.dashboard.data import kept_density

# Figures are built with Figure() directly, not pyplot: no global state, nothing to close per rerun.
BAND_ALPHA = 0.25


def curves_figure(points: pd.DataFrame, quality_metric: str, threshold: float) -> Figure:
    """Forbidden share against the quality metric and against KL, one line per method setting (paper Fig. 4)."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, column, label in zip(axes, ("quality", "kl_classes"), (quality_metric, "KL of class histogram")):
        for line, rows in points[~points.unguided].groupby("line", sort=True):
            rows = rows.sort_values("scale")
            ax.plot(100 * rows.forbidden_rate, rows[column], "o-", label=line)
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


def curves_chart(points: pd.DataFrame, quality_metric: str, threshold: float) -> alt.HConcatChart:
    """Interactive paper Fig. 4: forbidden share against quality and against KL, 95% error bars both ways, the run on hover."""
    data = points.assign(forbidden_pct=100 * points.forbidden_rate, forbidden_low_pct=100 * points.forbidden_low,
                         forbidden_high_pct=100 * points.forbidden_high)
    tooltip = ["line", "setting", "scale", alt.Tooltip("forbidden_pct", format=".2f", title="forbidden %"),
               alt.Tooltip("quality", format=".4g", title=quality_metric), alt.Tooltip("kl_classes", format=".4g", title="KL"), "samples", "run_id"]
    charts = []
    for value, low, high, title in (("quality", "quality_low", "quality_high", quality_metric), ("kl_classes", "kl_low", "kl_high", "KL of class histogram")):
        base = alt.Chart(data).encode(x=alt.X("forbidden_pct:Q", title="forbidden share (%)"), color=alt.Color("line:N", title=None))
        lines = base.transform_filter("!datum.unguided").mark_line(point=True).encode(y=alt.Y(f"{value}:Q", title=title), order="scale:Q",
                                                                                      tooltip=tooltip)
        star = base.transform_filter("datum.unguided").mark_point(shape="diamond", size=160, filled=True, color="black").encode(
            y=f"{value}:Q", tooltip=tooltip)
        vertical = base.mark_rule(opacity=0.5).encode(y=f"{low}:Q", y2=f"{high}:Q")
        horizontal = base.mark_rule(opacity=0.5).encode(x="forbidden_low_pct:Q", x2="forbidden_high_pct:Q", y=f"{value}:Q")
        rule = alt.Chart(pd.DataFrame({"x": [100 * threshold]})).mark_rule(strokeDash=[4, 4], color="grey").encode(x="x:Q")
        charts.append(alt.layer(vertical, horizontal, lines, star, rule).properties(width=420, height=320).interactive())
    return alt.hconcat(*charts)


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
