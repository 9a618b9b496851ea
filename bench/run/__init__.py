"""Running: plan (request -> resolved run -> shard jobs), one engine for runs and sweeps, executors.

Only bench/run/ray.py imports ray; it is imported when a Ray executor is asked for.
"""
from negguide.bench.run.engine import (
           RunOutcome,
           artifacts_root,
           run_all,
           run_one,
           stored_result,
)
from negguide.bench.run.executors import Executor, InProcessExecutor
from negguide.bench.run.plan import (
           ResolvedRun,
           RunRequest,
           ShardJob,
           expand_sweep,
           resolve,
           resolve_all,
)

__all__ = ["Executor", "InProcessExecutor", "ResolvedRun", "RunOutcome", "RunRequest", "ShardJob", "artifacts_root",
           "expand_sweep", "resolve", "resolve_all", "run_all", "run_one", "stored_result"]
