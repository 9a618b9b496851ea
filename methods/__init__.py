"""Guidance methods: the step protocol (the bottom floor: it imports torch and itself only),
one small module per method, and the registry."""
from negguide.methods.base import (
           GuidanceMethod,
           Params,
           Predictions,
           State,
           constant,
           per_sample,
)
from negguide.methods.errors import BenchError, MethodError
from negguide.methods.registry import (
           MethodSpec,
           available_methods,
           load_method,
           method_class,
)
from negguide.methods.schedule import Schedule, Step

__all__ = ["BenchError", "GuidanceMethod", "MethodError", "MethodSpec", "Params", "Predictions", "Schedule", "State", "Step",
           "available_methods", "constant", "load_method", "method_class", "per_sample"]
