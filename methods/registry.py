"""Registries of named things (methods here, tasks in bench.tasks): built-ins loaded on first use,
installed plugins from an entry-point group, collision errors and "did you mean" suggestions.

Methods also come from files, `path/to/file.py:ClassName`; their parameters parse to declared types.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Generic, Iterable, TypeVar

from negguide.methods.base import GuidanceMethod
from negguide.methods.errors import BenchError, did_you_mean

T = TypeVar("T")
METHOD_GROUP = "negguide.methods"
NETWORK_PREDICTIONS = ("uncond", "neg", "null", "nag")  # predictions a denoising network computes; the others are exact or kernel quantities
_BUILTIN_METHOD_MODULES = ("unguided", "negative_prompting", "sld", "sld_diffusers", "dng", "oracles", "np_delayed", "apg", "sega", "perp_neg", "safe_denoiser", "safe_denoiser_theorem", "nag")


class Registry(Generic[T]):
    """Name -> item for one kind of thing. `builtins()` and each plugin yield (name, item) pairs;
    both are read on first use only, so listing or resolving one name imports nothing else heavy."""

    def __init__(self, kind: str, group: str, builtins: Callable[[], Iterable[tuple[str, T]]],
                 from_plugin: Callable[[object, str], Iterable[tuple[str, T]]], list_command: str):
        self.kind, self.group, self.list_command = kind, group, list_command
        self._builtins, self._from_plugin = builtins, from_plugin
        self._table: dict[str, T] | None = None
        self._with_plugins = False

    def _add(self, table: dict[str, T], name: str, item: T, origin: str) -> None:
        if name in table and table[name] is not item:
            raise BenchError(f"{self.kind} name {name!r} is registered twice (the second by {origin}); rename one")
        table[name] = item

    def _builtin_table(self) -> dict[str, T]:
        if self._table is None:
            table: dict[str, T] = {}
            for name, item in self._builtins():
                self._add(table, name, item, "a built-in")
            self._table = table
        return self._table

    def _load_plugins(self) -> dict[str, T]:
        table = self._builtin_table()
        if not self._with_plugins:
            for entry in importlib.metadata.entry_points(group=self.group):
                try:
                    loaded = entry.load()
                except Exception as exc:  # a plugin may fail in any way: name it on one line
                    raise BenchError(f"installed {self.kind} plugin {entry.name!r} ({entry.value}) failed to load: "
                                     f"{type(exc).__name__}: {exc}; fix or uninstall it") from None
                for name, item in self._from_plugin(loaded, entry.name):
                    self._add(table, name, item, f"plugin {entry.value}")
            self._with_plugins = True
        return table

    def get(self, name: str) -> T:
        table = self._builtin_table()
        if name not in table:
            table = self._load_plugins()
        if name not in table:
            raise BenchError(f"unknown {self.kind} {name!r}{did_you_mean(name, list(table))}; `{self.list_command}` shows all")
        return table[name]

    def all(self) -> dict[str, T]:
        return dict(self._load_plugins())


# ---- methods ------------------------------------------------------------------------------

def named_classes(package: str, modules: Iterable[str], base: type[T]) -> Iterable[tuple[str, type[T]]]:
    """(name, class) of each named subclass of `base` defined in the given modules of `package` (built-ins of a registry)."""
    for module_name in modules:
        module = importlib.import_module(f"{package}.{module_name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, base) and value.name and value.__module__ == module.__name__:
                yield value.name, value


def _builtin_methods() -> Iterable[tuple[str, type[GuidanceMethod]]]:
    return named_classes("negguide.methods", _BUILTIN_METHOD_MODULES, GuidanceMethod)


def _method_plugin(loaded: object, entry_name: str) -> Iterable[tuple[str, type[GuidanceMethod]]]:
    yield entry_name, _check_class(loaded, f"entry point {entry_name!r}")


METHODS: Registry[type[GuidanceMethod]] = Registry("method", METHOD_GROUP, _builtin_methods, _method_plugin, "bench list methods")


def builtin_method_names() -> frozenset[str]:
    """Names a file or submitted method may not take: a built-in's card and runs must stay its own."""
    return frozenset(METHODS._builtin_table())


def available_methods() -> dict[str, str]:
    """Name -> one-line summary of every method: built-ins, then installed plugins."""
    return {name: cls.summary for name, cls in METHODS.all().items()}


def is_file_spec(spec: str) -> bool:
    return ":" in spec and spec.split(":", 1)[0].endswith(".py")


def method_class(spec: str) -> type[GuidanceMethod]:
    """Resolve a method name or `file.py:Class` to its class."""
    return _from_file(spec, source_digest(spec)) if is_file_spec(spec) else METHODS.get(spec)


def source_digest(spec: str) -> str | None:
    """A user's method file is part of a run's config: editing it must not reuse old results."""
    if not is_file_spec(spec):
        return None
    path = Path(spec.split(":", 1)[0])
    if not path.is_file():
        raise BenchError(f"method file {path} not found; pass --method path/to/file.py:ClassName")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@lru_cache(maxsize=32)
def _from_file(spec: str, digest: str | None) -> type[GuidanceMethod]:
    """The class of a method file, executed once per process and content (the digest keys the cache)."""
    path_text, class_name = spec.rsplit(":", 1)
    path = Path(path_text)
    module_spec = importlib.util.spec_from_file_location(f"user_method_{path.stem}_{digest}", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses look their module up while the file executes
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit, KeyboardInterrupt) as exc:  # a user's file may fail (or exit) in any way; report it as the file's
        sys.modules.pop(module_spec.name, None)
        raise BenchError(f"could not load method file {path}: it raised {type(exc).__name__}: {exc}") from None
    if not hasattr(module, class_name):
        classes = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, GuidanceMethod) and v is not GuidanceMethod]
        raise BenchError(f"{path} has no class {class_name!r}{did_you_mean(class_name, classes)}")
    cls = _check_class(getattr(module, class_name), spec)
    builtin = METHODS._builtin_table().get(cls.name)
    if builtin is not None and Path(sys.modules[builtin.__module__].__file__).resolve() != path.resolve():  # a built-in's own file may be named
        raise BenchError(f"{spec} calls itself {cls.name!r}, a built-in method's name; give its class another `name`")
    return cls


def _check_class(obj: object, spec: str) -> type[GuidanceMethod]:
    if not (isinstance(obj, type) and issubclass(obj, GuidanceMethod)):
        raise BenchError(f"{spec} is not a GuidanceMethod subclass; subclass negguide.methods.GuidanceMethod")
    if not obj.name:
        raise BenchError(f"{spec} has no `name`; set a class attribute name = '...'")
    return obj


# ---- parameters ---------------------------------------------------------------------------

def parameter_table(cls: type[GuidanceMethod]) -> list[dict]:
    """Each parameter's name, type and default, for `bench describe method`."""
    hints = typing.get_type_hints(cls.Params)
    return [{"name": f.name, "type": hints[f.name].__name__, "default": f.default} for f in dataclasses.fields(cls.Params)]


def method_card(spec: str) -> dict:
    """What a method is: name, summary, formula (its docstring), predictions per step, parameters, reference."""
    import inspect

    cls = method_class(spec)
    module = inspect.getmodule(cls)
    formula = inspect.cleandoc(cls.__doc__ or (module.__doc__ if module else "") or "")
    network = [name for name in cls.needs if name in NETWORK_PREDICTIONS]
    return {"name": cls.name, "summary": cls.summary, "formula": formula, "needs": list(cls.needs),
            "cost": f"{len(network)} network predictions per step ({', '.join(network)}): network evaluations per image "
                    f"{len(network)} x steps; text-to-image tasks add the empty prompt for positive CFG; other needs "
                    "(exact or kernel quantities) cost no network call",
            "parameters": parameter_table(cls), "reference": cls.reference or "(none given)",
            "source": "built-in" if cls.__module__.startswith("negguide.methods.") else (spec if is_file_spec(spec) else cls.__module__)}


def parse_value(name: str, text: str, kind: type) -> object:
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


def build_params(cls: type[GuidanceMethod], overrides: dict[str, object]) -> object:
    """The method's Params with overrides parsed to their declared types (text or JSON values) and validated."""
    return parse_fields(cls.Params, overrides, f"method {cls.name!r}", "parameter", f"bench describe method {cls.name}")


def parse_fields(fields: type, overrides: dict[str, object], owner: str, noun: str, describe: str) -> object:
    """A validated instance of the dataclass `fields` (a method's Params, a sampler's Settings) from text or typed values."""
    hints = typing.get_type_hints(fields)
    values = {}
    for key, raw in overrides.items():
        if key not in hints:
            raise BenchError(f"{owner} has no {noun} {key!r}{did_you_mean(key, list(hints))}; `{describe}` lists them")
        values[key] = parse_value(key, raw, hints[key]) if isinstance(raw, str) else hints[key](raw)
    instance = fields(**values)
    try:
        instance.validate()
    except ValueError as exc:
        raise BenchError(f"{owner}: {exc}") from None
    return instance


@dataclass(frozen=True)
class MethodSpec:
    """How a method travels between processes: its name or file, the file's digest, its parameters.

    Never a pickled object: a worker rebuilds the method through the same validation as the CLI,
    and a file whose content changed since the run was planned is refused.
    """

    spec: str  # registered name or path/to/file.py:ClassName
    name: str
    source_digest: str | None
    params: dict

    @classmethod
    def of(cls, spec: str, overrides: dict[str, object] | None = None) -> "MethodSpec":
        method = load_method(spec, overrides)
        return cls(spec, method.name, source_digest(spec), method.config()["params"])

    def build(self) -> GuidanceMethod:
        if source_digest(self.spec) != self.source_digest:
            raise BenchError(f"method file {self.spec.split(':', 1)[0]} changed while the run was in progress; run the command again")
        method_cls = method_class(self.spec)
        return method_cls(build_params(method_cls, self.params))


def load_method(spec: str, overrides: dict[str, object] | None = None) -> GuidanceMethod:
    """An instance of the method named by `spec` with validated parameters."""
    cls = method_class(spec)
    return cls(build_params(cls, overrides or {}))
