"""A small registry: `@DATASETS.register("cifar10")` on a factory; `DATASETS.create("cifar10", ...)`.

Adding a dataset, backbone or method is one file plus one decorator; the CLI, the config checks and
the registry-parametrised tests read the names from here.
"""
from __future__ import annotations

from typing import Any, Callable

from sslab.errors import ConfigError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
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


DATASETS = Registry("dataset")
BACKBONES = Registry("backbone")
METHODS = Registry("method")
