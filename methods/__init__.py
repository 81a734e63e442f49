"""Method registry: every module in this package that defines a `HashMethod` subclass with a
`name` registers it (adding a method means adding one file here), and so does every installed
package that declares an entry point in the group `hashbench.methods`, so that a researcher can
benchmark a method without forking this repository.

An entry point names a `HashMethod` subclass (`my_pkg.hashing:MyMethod`) or a module whose
subclasses all register (`my_pkg.hashing`). A plugin may not take a built-in method's name; a
plugin that fails to load is reported (`plugin_problems`) and left out, never half-registered.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType

from bench.errors import UserError
from methods.base import HashMethod

ENTRY_POINT_GROUP = "hashbench.methods"
_INFRASTRUCTURE = {"base", "centers", "context", "projection"}
_REGISTRY: dict[str, type[HashMethod]] = {}
_SOURCES: dict[str, MethodSource] = {}
_PROBLEMS: list[str] = []


@dataclass(frozen=True)
class MethodSource:
    """Where a method comes from: this repository (package None) or an installed plugin,
    named by its distribution, version and entry point (a record of a plugin run keeps these)."""

    package: str | None = None
    version: str | None = None
    entry_point: str | None = None

    @property
    def builtin(self) -> bool:
        return self.package is None

    def describe(self) -> str:
        return "built in" if self.builtin else f"plugin {self.package} {self.version}"

    def as_record(self) -> dict[str, str | None]:
        return {"package": self.package, "version": self.version, "entry_point": self.entry_point}


def _classes_in(value: object) -> list[type[HashMethod]]:
    """The named HashMethod subclasses an entry point (or a module of ours) provides."""
    if isinstance(value, ModuleType):
        return [v for v in vars(value).values()
                if isinstance(v, type) and issubclass(v, HashMethod) and v is not HashMethod
                and v.__module__ == value.__name__ and getattr(v, "name", None)]
    if isinstance(value, type) and issubclass(value, HashMethod) and getattr(value, "name", None):
        return [value]
    return []


def _register(cls: type[HashMethod], source: MethodSource) -> None:
    if cls.name in _REGISTRY:
        other = _SOURCES[cls.name].describe()
        raise UserError(f"method name '{cls.name}' of {source.describe()} is taken ({other}); "
                        f"a plugin must choose another name")
    _REGISTRY[cls.name] = cls
    _SOURCES[cls.name] = source


def _discover_plugins() -> None:
    for entry in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(entry, "dist", None)
        source = MethodSource(package=dist.name if dist else entry.module,
                              version=dist.version if dist else None, entry_point=entry.value)
        try:
            classes = _classes_in(entry.load())
            if not classes:
                raise TypeError(f"{entry.value} is neither a HashMethod subclass with a `name` nor "
                                f"a module defining one")
            for cls in classes:
                _register(cls, source)
        except Exception as error:  # noqa: BLE001 - a broken plugin must not hide the others
            _PROBLEMS.append(f"plugin entry point '{entry.name} = {entry.value}' "
                             f"({source.describe()}) not loaded: {error}")


def _discover() -> dict[str, type[HashMethod]]:
    if not _REGISTRY:
        for info in pkgutil.iter_modules(__path__):
            if info.name in _INFRASTRUCTURE or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for cls in _classes_in(module):
                if cls.name in _REGISTRY:
                    raise RuntimeError(f"two methods are named '{cls.name}'")
                _REGISTRY[cls.name] = cls
                _SOURCES[cls.name] = MethodSource()
        _discover_plugins()
    return _REGISTRY


def available_methods() -> list[str]:
    return sorted(_discover())


def get_method(name: str) -> type[HashMethod]:
    registry = _discover()
    if name not in registry:
        hint = f" ({'; '.join(_PROBLEMS)})" if _PROBLEMS else ""
        raise UserError(f"unknown method '{name}'; valid methods: {', '.join(sorted(registry))}{hint}")
    return registry[name]


def method_source(name: str) -> MethodSource:
    """Built in, or the plugin distribution (and version) that registered the method."""
    get_method(name)
    return _SOURCES.get(name, MethodSource())  # a class put in the registry directly: ours


def plugin_problems() -> list[str]:
    """One line per plugin entry point that could not be loaded (shown by `bench list`)."""
    _discover()
    return list(_PROBLEMS)
