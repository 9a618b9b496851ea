"""Benchmark harness for negative guidance in diffusion models: CLI, sampler, tasks, runner."""
