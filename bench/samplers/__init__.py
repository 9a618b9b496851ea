"""Samplers: one contract (`base`), one file per sampler, a registry with entry points, and the loop."""
from negguide.bench.samplers.base import Memory, Sampler, Settings
from negguide.bench.samplers.registry import DEFAULT_SAMPLER, SAMPLERS, SamplerSpec, available_samplers, sampler_card, sampler_class

__all__ = ["DEFAULT_SAMPLER", "SAMPLERS", "Memory", "Sampler", "SamplerSpec", "Settings", "available_samplers", "sampler_card", "sampler_class"]
