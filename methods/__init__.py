"""Guidance methods: one small module each, a base protocol and a registry."""
from methods.base import GuidanceMethod, Predictions, State
from methods.registry import available_methods, load_method

__all__ = ["GuidanceMethod", "Predictions", "State", "available_methods", "load_method"]
