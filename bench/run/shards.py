"""Drawing one shard, in whichever process runs it, and the shard files a run resumes from."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from negguide.bench.run.plan import ShardJob
from negguide.bench.sampler import sample
from negguide.bench.tasks import Task, TaskRuntime
from negguide.methods.errors import BenchError, MethodError
from negguide.results.artifacts import read_npz

_RUNTIMES: dict[tuple, TaskRuntime] = {}
_MAX_RUNTIMES = 4


def pick_device(task: Task, requested: str | None = None) -> torch.device:
    """The device a task runs on here: the one asked for, else the task's own, else the GPU when there is one."""
    return torch.device(requested or task.default_device or ("cuda" if torch.cuda.is_available() else "cpu"))


def runtime_for(task: Task, device: torch.device) -> TaskRuntime:
    """A task's runtime on a device, loaded once per process and reloaded when its model files change."""
    key = (task.name, task.version, task.resources(), str(device))
    if key not in _RUNTIMES:
        if len(_RUNTIMES) >= _MAX_RUNTIMES:
            _RUNTIMES.pop(next(iter(_RUNTIMES)))
        _RUNTIMES[key] = task.load(device)
    return _RUNTIMES[key]


def clear_runtimes() -> None:
    _RUNTIMES.clear()


@contextlib.contextmanager
def intra_op_threads(count: int | None) -> Iterator[None]:
    """Torch's thread count for the duration of a draw, restored afterwards (it is process-wide)."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_device(requested: str | None) -> None:
    """A device named on the command line exists here, checked before any work (one line otherwise)."""
    if requested is None:
        return
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError) as exc:
        raise BenchError(f"--device {requested!r} is not a device ({str(exc).splitlines()[0]}); give cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device {requested}: no CUDA GPU is available here; leave --device out or give cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BenchError(f"--device {requested}: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0 ...)")
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {requested}: only cpu and cuda devices are supported")


def draw_shard(job: ShardJob, device: torch.device, on_step: Callable[[int], None] | None = None,
               ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Draw samples [start, stop) (or exactly `ids`: sample i depends only on (seed, i)): the arrays a shard file holds."""
    runtime = runtime_for(job.task, device)
    ids = np.arange(job.start, job.stop) if ids is None else np.asarray(ids, dtype=np.int64)
    callback = (lambda info: on_step(job.size)) if on_step else None
    with intra_op_threads(job.task.intra_op_threads), torch.inference_mode():
        try:
            x, traces = sample(job.method.build(), runtime.condition(ids), job.task.schedule.steps(job.steps), job.seed, job.task.shape,
                               dtype=runtime.dtype, device=runtime.device, callback=callback, sampler=job.sampler.build())
        except SystemExit as exc:  # a method calling exit() would end the run silently (exit code 0): name it instead
            raise MethodError(f"method {job.method.name!r} called exit({exc.code!r}) while drawing; a method must return (eps, state)") from None
        arrays = {f"trace__{k}": v for k, v in traces.arrays().items()}
        return {"x": x.cpu().numpy(), "trace_t": np.asarray(traces.steps), "start": np.asarray(job.start), "stop": np.asarray(job.stop), **arrays}


def load_shard(job: ShardJob) -> dict[str, np.ndarray] | None:
    """A saved shard if it is complete and belongs to this job; corrupt files are not trusted."""
    path = Path(job.path)
    if not path.exists():
        return None
    data = read_npz(path)
    if data is None or "x" not in data or int(data.get("start", -1)) != job.start or int(data.get("stop", -1)) != job.stop or len(data["x"]) != job.size:
        warnings.warn(f"shard file {path} is truncated or corrupt; recomputing it", stacklevel=2)
        path.unlink(missing_ok=True)
        return None
    return data
