"""Executors only execute: they take shard jobs and yield (job, arrays) as shards finish.

Planning, resuming, writing shard files, judging and storing are the engine's (bench/run/engine.py);
progress comes back through a callback counting sample-steps.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol

import numpy as np

from negguide.bench.run.plan import ShardJob
from negguide.bench.run.shards import check_device, draw_shard, pick_device

Progress = Callable[[int], None]  # sample-steps done since the last call


class Executor(Protocol):
    def run(self, jobs: list[ShardJob], progress: Progress) -> Iterator[tuple[ShardJob, dict[str, np.ndarray]]]: ...

    def close(self) -> None: ...


class InProcessExecutor:
    """Draws shards one after another in this process, on the task's device (or the one asked for)."""

    def __init__(self, device: str | None = None):
        check_device(device)
        self.device = device

    def run(self, jobs: list[ShardJob], progress: Progress) -> Iterator[tuple[ShardJob, dict[str, np.ndarray]]]:
        for job in jobs:
            yield job, draw_shard(job, pick_device(job.task, self.device), on_step=progress)

    def close(self) -> None:
        """Nothing to release in-process."""
