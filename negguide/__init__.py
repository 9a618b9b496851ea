"""negguide-bench: a benchmark harness and leaderboard for negative guidance in diffusion models.

One import namespace over the repository's folders: `negguide.methods` (the step protocol and the
methods), `negguide.metrics`, `negguide.datasets`, `negguide.bench` (sampler, tasks, run engine,
CLI), `negguide.results` (the store) and `negguide.dashboard`.
"""
