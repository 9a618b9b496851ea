"""One progress bar over all shards of a run or sweep, with images/s and an ETA (tqdm, on stderr)."""
from __future__ import annotations

import sys


class ProgressBar:
    """Counts sample-steps (integers, so the bar never overshoots) and shows them as images."""

    def __init__(self, total_samples: int, steps: int, label: str, enabled: bool):
        from tqdm import tqdm

        self.steps = steps
        # Redraw at most once a second on a terminal, every 30 s into a log file.
        interval = 1.0 if sys.stderr.isatty() else 30.0
        self.bar = tqdm(total=total_samples * steps, unit="img", unit_scale=1.0 / steps, desc=label, disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True, smoothing=0.1, mininterval=interval)

    def __call__(self, sample_steps: int) -> None:
        self.bar.update(sample_steps)

    def add_samples(self, count: int) -> None:
        """Whole samples done at once (resumed shards)."""
        self.bar.update(count * self.steps)

    def close(self) -> None:
        self.bar.close()
