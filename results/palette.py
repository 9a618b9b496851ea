"""One colour per method, the same in the dashboard, the static site and the results pages' figures.

The registered methods have fixed colours (Tableau 10 first, so the paper's three methods and unguided
sampling read well on white); any other name (a user's method) gets a colour picked by a digest of its
name, so it too is the same in every figure and on every machine.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

UNGUIDED_COLOUR = "#333333"
METHOD_COLOURS: dict[str, str] = {
    "none": UNGUIDED_COLOUR,
    "np": "#4e79a7",
    "sld": "#f28e2b",
    "dng": "#e15759",
    "dng-exact": "#76b7b2",
    "cfg-remember": "#59a14f",
    "np-interval": "#edc948",
    "np-delayed": "#b07aa1",
    "apg": "#ff9da7",
    "sega": "#9c755f",
    "sega-sd": "#bab0ac",
    "perp-neg": "#1f77b4",
    "sld-sd": "#ffbe7d",
    "safe-denoiser": "#8cd17d",
    "safe-denoiser-theorem": "#499894",
    "nag": "#d37295",
}
# Colours for names outside the table: distinct from one another, none of them the unguided grey.
FALLBACK_COLOURS = ("#17becf", "#bcbd22", "#7f7f7f", "#8c564b", "#e377c2", "#9467bd", "#2ca02c", "#d62728",
                    "#a0cbe8", "#86bcb6", "#f1ce63", "#d4a6c8", "#fabfd2", "#d7b5a6", "#79706e", "#b6992d")


def method_colour(method: str) -> str:
    """The method's colour: fixed for registered methods, else chosen by a stable digest of the name."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    digest = hashlib.sha256(method.encode()).digest()  # not hash(): that changes between processes
    return FALLBACK_COLOURS[int.from_bytes(digest[:4], "big") % len(FALLBACK_COLOURS)]


def colour_scale(methods: Iterable[str]) -> tuple[list[str], list[str]]:
    """(domain, range) for a chart's colour scale over these methods, in name order."""
    domain = sorted(set(methods))
    return domain, [method_colour(m) for m in domain]
