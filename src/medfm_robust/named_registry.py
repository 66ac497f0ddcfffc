"""A read-only name -> definition mapping, filled by a stage's ``register_*`` decorator (segmentation
models, fine-tuning strategies): one definition per name, in registration order, unknown names rejected
with one ``ConfigError`` listing the known ones."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from medfm_robust.errors import ConfigError

T = TypeVar("T")


class NamedRegistry(Mapping[str, T], Generic[T]):
    """Registered definitions of one ``kind`` (e.g. ``"segmentation model"``), read-only to its users."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> None:
        """Register ``item`` as ``name``; a second definition of a name is a ``ValueError``."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = item

    def remove(self, name: str) -> None:
        """Unregister ``name`` (tests that register a temporary definition)."""
        del self._items[name]

    def lookup(self, name: str) -> T:
        """The definition of ``name``; an unknown name raises ``ConfigError`` listing the known ones."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} '{name}' (known: {', '.join(self._items)})") from None

    def __getitem__(self, key: str) -> T:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"NamedRegistry({self.kind!r}, {list(self._items)})"
