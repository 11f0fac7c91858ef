"""A small registry: `@DATASETS.register("cifar10")` on a factory; `DATASETS.create("cifar10", ...)`.

Adding a dataset, backbone or method is one file with one decorator; the CLI, the config checks and the
registry-parametrised tests read the names from here. A registered method's settings class learns the
method's name (`settings.method`), so a settings object says which method it configures.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from sslab.errors import ConfigError


class Registry:
    def __init__(self, kind: str, on_register: Callable[[str, Any], None] | None = None):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._on_register = on_register

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            if self._on_register is not None:
                self._on_register(name, factory)
            self._entries[name] = factory
            return factory

        return add

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._entries[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def _name_the_settings(name: str, method: Any) -> None:
    """`Settings.method = name`. Each method has a settings class of its own: a method that reuses another's
    (a subclass that changes only the forward) gets a subclass of it, with the same settings and defaults."""
    settings = method.Settings
    if "method" in settings.__dict__:  # named already (or the base of all settings)
        settings = dataclasses.dataclass(type(f"{method.__name__}Settings", (settings,), {"__module__": method.__module__}))
        method.Settings = settings
    settings.method = name


DATASETS = Registry("dataset")
BACKBONES = Registry("backbone")
METHODS = Registry("method", on_register=_name_the_settings)
