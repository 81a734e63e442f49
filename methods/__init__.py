"""Method registry: every module in this package that defines a `HashMethod` subclass with a
`name` registers it. Adding a method means adding one file here."""

from __future__ import annotations

import importlib
import pkgutil

from bench.errors import UserError
from methods.base import HashMethod

_INFRASTRUCTURE = {"base", "centers"}
_REGISTRY: dict[str, type[HashMethod]] = {}


def _discover() -> dict[str, type[HashMethod]]:
    if not _REGISTRY:
        for info in pkgutil.iter_modules(__path__):
            if info.name in _INFRASTRUCTURE or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for value in vars(module).values():
                if (
                    isinstance(value, type)
                    and issubclass(value, HashMethod)
                    and value is not HashMethod
                    and value.__module__ == module.__name__
                    and getattr(value, "name", None)
                ):
                    if value.name in _REGISTRY:
                        raise RuntimeError(f"two methods are named '{value.name}'")
                    _REGISTRY[value.name] = value
    return _REGISTRY


def available_methods() -> list[str]:
    return sorted(_discover())


def get_method(name: str) -> type[HashMethod]:
    registry = _discover()
    if name not in registry:
        raise UserError(f"unknown method '{name}'; valid methods: {', '.join(sorted(registry))}")
    return registry[name]
