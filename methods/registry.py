"""Method registry: built-ins, installed entry points (group `negguide.methods`) and
`path/to/file.py:ClassName`, with typed parameter parsing and "did you mean" errors."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import sys
import typing
from pathlib import Path

from bench.errors import BenchError, did_you_mean
from methods.base import GuidanceMethod

ENTRY_POINT_GROUP = "negguide.methods"
_BUILTIN_MODULES = ("unguided", "negative_prompting", "sld", "sld_diffusers", "dng", "oracles")


def _builtin() -> dict[str, type[GuidanceMethod]]:
    found: dict[str, type[GuidanceMethod]] = {}
    for module_name in _BUILTIN_MODULES:
        module = importlib.import_module(f"methods.{module_name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, GuidanceMethod) and value.name and value.__module__ == module.__name__:
                _register(found, value.name, value)
    return found


def _register(table: dict[str, type[GuidanceMethod]], name: str, cls: type[GuidanceMethod]) -> None:
    if name in table and table[name] is not cls:
        raise BenchError(f"method name {name!r} is registered twice ({table[name].__module__} and {cls.__module__}); rename one")
    table[name] = cls


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_methods() -> dict[str, str]:
    """Name -> one-line summary of every method: built-ins, then installed plugins."""
    table = {name: cls.summary for name, cls in _builtin().items()}
    for name in _entry_points():
        table.setdefault(name, "(installed plugin)")
    return table


def method_class(spec: str) -> type[GuidanceMethod]:
    """Resolve a method name or `file.py:Class` to its class."""
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        return _from_file(spec)
    builtin = _builtin()
    if spec in builtin:
        return builtin[spec]
    plugins = _entry_points()
    if spec in plugins:
        return _check_class(plugins[spec].load(), spec)
    known = sorted(builtin) + sorted(plugins)
    raise BenchError(f"unknown method {spec!r}{did_you_mean(spec, known)}; `bench list methods` shows all")


def _from_file(spec: str) -> type[GuidanceMethod]:
    path_text, class_name = spec.rsplit(":", 1)
    path = Path(path_text)
    if not path.is_file():
        raise BenchError(f"method file {path} not found; pass --method path/to/file.py:ClassName")
    module_spec = importlib.util.spec_from_file_location(f"user_method_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses look their module up while the file executes
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # a user's file may fail in any way; report it on one line
        sys.modules.pop(module_spec.name, None)
        raise BenchError(f"could not load method file {path}: {type(exc).__name__}: {exc}") from None
    if not hasattr(module, class_name):
        classes = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, GuidanceMethod) and v is not GuidanceMethod]
        raise BenchError(f"{path} has no class {class_name!r}{did_you_mean(class_name, classes)}")
    return _check_class(getattr(module, class_name), spec)


def _check_class(obj: object, spec: str) -> type[GuidanceMethod]:
    if not (isinstance(obj, type) and issubclass(obj, GuidanceMethod)):
        raise BenchError(f"{spec} is not a GuidanceMethod subclass; subclass methods.GuidanceMethod")
    if not obj.name:
        raise BenchError(f"{spec} has no `name`; set a class attribute name = '...'")
    return obj


def parameter_table(cls: type[GuidanceMethod]) -> list[dict]:
    """Each parameter's name, type and default, for `bench describe method`."""
    hints = typing.get_type_hints(cls.Params)
    return [
        {"name": f.name, "type": hints[f.name].__name__, "default": f.default}
        for f in dataclasses.fields(cls.Params)
    ]


def _parse_value(name: str, text: str, kind: type) -> object:
    if kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
    else:
        try:
            return kind(text)
        except ValueError:
            pass
    raise BenchError(f"parameter {name}={text!r} is not a valid {kind.__name__}; give e.g. {name}=<{kind.__name__}>")


def build_params(cls: type[GuidanceMethod], overrides: dict[str, str | float | int]) -> object:
    """The method's Params with `key=value` overrides parsed to their declared types and validated."""
    hints = typing.get_type_hints(cls.Params)
    values = {}
    for key, raw in overrides.items():
        if key not in hints:
            raise BenchError(f"method {cls.name!r} has no parameter {key!r}{did_you_mean(key, list(hints))}; `bench describe method {cls.name}` lists them")
        values[key] = _parse_value(key, raw, hints[key]) if isinstance(raw, str) else hints[key](raw)
    params = cls.Params(**values)
    try:
        params.validate()
    except ValueError as exc:
        raise BenchError(f"method {cls.name!r}: {exc}") from None
    return params


def load_method(spec: str, overrides: dict[str, str | float | int] | None = None) -> GuidanceMethod:
    """An instance of the method named by `spec` with validated parameters."""
    cls = method_class(spec)
    return cls(build_params(cls, overrides or {}))
