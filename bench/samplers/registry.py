"""The samplers by name: built-ins loaded on first use, plugins from the entry-point group
`negguide.samplers`, did-you-mean; and `SamplerSpec`, the name and settings a run carries and hashes."""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Iterable

from negguide.bench.samplers.base import Sampler
from negguide.methods.errors import BenchError
from negguide.methods.registry import Registry, named_classes, parse_fields

SAMPLER_GROUP = "negguide.samplers"
_BUILTIN_MODULES = ("ddpm", "ddim", "dpm_solver", "euler_ancestral")


def _builtin_samplers() -> Iterable[tuple[str, type[Sampler]]]:
    return named_classes("negguide.bench.samplers", _BUILTIN_MODULES, Sampler)


def _sampler_plugin(loaded: object, entry_name: str) -> Iterable[tuple[str, type[Sampler]]]:
    if not (isinstance(loaded, type) and issubclass(loaded, Sampler)):
        raise BenchError(f"sampler entry point {entry_name!r} is not a Sampler subclass; subclass negguide.bench.samplers.Sampler")
    yield entry_name, loaded


SAMPLERS: Registry[type[Sampler]] = Registry("sampler", SAMPLER_GROUP, _builtin_samplers, _sampler_plugin, "bench list samplers")


def sampler_class(name: str) -> type[Sampler]:
    return SAMPLERS.get(name)


def available_samplers() -> dict[str, str]:
    """Name -> one-line summary of every sampler."""
    return {name: cls.summary for name, cls in SAMPLERS.all().items()}


def settings_table(cls: type[Sampler]) -> list[dict]:
    hints = typing.get_type_hints(cls.Settings)
    return [{"name": f.name, "type": hints[f.name].__name__, "default": f.default} for f in dataclasses.fields(cls.Settings)]


def sampler_card(name: str) -> dict:
    """What `bench describe sampler NAME` prints."""
    import inspect

    cls = sampler_class(name)
    return {"name": cls.name, "summary": cls.summary, "update": inspect.cleandoc(cls.__doc__ or ""), "settings": settings_table(cls),
            "min_steps": cls.min_steps, "reference": cls.reference or "(none given)"}


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler as a run names it: its name and every setting (defaults filled in), hashable and JSON-able."""

    name: str = "ddpm"
    settings: tuple[tuple[str, object], ...] = (("variance", "beta_tilde"),)

    @classmethod
    def of(cls, name: str = "ddpm", overrides: dict[str, object] | None = None) -> "SamplerSpec":
        """Validate a name and settings (text from the command line, or typed values) into a spec."""
        sampler_cls = sampler_class(name)
        settings = parse_fields(sampler_cls.Settings, overrides or {}, f"sampler {name!r}", "setting", f"bench describe sampler {name}")
        return cls(sampler_cls.name, tuple(sorted(dataclasses.asdict(settings).items())))

    @classmethod
    def from_config(cls, config: dict) -> "SamplerSpec":
        """The spec a run's resolved config names (runs stored before samplers: DDPM with their variance)."""
        if "sampler" in config:
            return cls.of(config["sampler"]["name"], config["sampler"]["settings"])
        return cls.of("ddpm", {"variance": config.get("sampler_variance", "beta_tilde")})

    @classmethod
    def from_json(cls, text: str | None, variance: str | None = None) -> "SamplerSpec":
        """A stored spec; a row written before samplers has only its DDPM variance."""
        if isinstance(text, str) and text:
            data = json.loads(text)
            return cls.of(data["name"], data["settings"])
        return cls.of("ddpm", {"variance": variance if isinstance(variance, str) else "beta_tilde"})

    def as_dict(self) -> dict:
        return {"name": self.name, "settings": dict(self.settings)}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    def hashed(self) -> dict:
        """What a run's config adds for its sampler: nothing for the default, so every id made before samplers stands."""
        if self.name == "ddpm":
            variance = dict(self.settings)["variance"]
            return {} if variance == "beta_tilde" else {"sampler_variance": variance}
        return {"sampler": self.as_dict()}

    @property
    def variance(self) -> str | None:
        """DDPM's noise variance (the store's legacy column); None for the other samplers."""
        return dict(self.settings).get("variance") if self.name == "ddpm" else None

    def label(self) -> str:
        """Short text: `ddpm`, `ddpm(variance=beta)`, `ddim(eta=0.0)`; defaults of DDPM left out."""
        if self.hashed() == {}:
            return "ddpm"
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.settings)})"

    def build(self) -> Sampler:
        sampler_cls = sampler_class(self.name)
        return sampler_cls(sampler_cls.Settings(**dict(self.settings)))


DEFAULT_SAMPLER = SamplerSpec()
