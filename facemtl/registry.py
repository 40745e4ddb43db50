"""Named building blocks chosen by config (trunks, sharing designs, task weightings): one registry class, so
each kind is registered, listed, looked up and validated the same way (timm's register_model/create_model)."""
from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Factories of one kind by name; ``create`` turns a bad name or bad options into a ConfigError."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding a factory (a class or function) under ``name``."""
        def add(factory: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = factory
            return factory
        return add

    def names(self) -> list[str]:
        return sorted(self._items)

    def check(self, name: str) -> None:
        """Raise a ConfigError naming the choices unless ``name`` is registered."""
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Build ``name`` with the given arguments."""
        self.check(name)
        try:
            return self._items[name](*args, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"bad options for {self.kind} {name!r}: {exc}") from None
