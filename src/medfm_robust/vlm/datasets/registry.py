"""The VLM dataset-reader registry (the perturbation registry's pattern): one decorated definition per
reader, carrying its metadata.

A reader is registered with :func:`register` on a function ``read(name, spec, task, ctx) -> sample table``
taking the dataset's name, its ``vlm.datasets.<name>`` entry, the task and a :class:`BuildContext`. Its
``adapter`` name is what the entry's ``adapter`` key selects (the schema's enum is tested against
:data:`READERS`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from medfm_robust.errors import ConfigError
from medfm_robust.vlm.tasks import TASKS


@dataclass(frozen=True)
class BuildContext:
    """What a reader gets besides its config entry: ``root`` (the resolved dataset folder of a reader with
    ``needs_path``, else None), canonical ``shards`` (readers with ``sources``), the global ``seed`` and
    ``perturb_max_images`` (the perturbation stage's ``perturb.max_images`` or None)."""

    root: Path | None
    shards: Sequence[str | Path]
    seed: int
    perturb_max_images: int | None


Read = Callable[[str, Mapping[str, Any], str, BuildContext], pd.DataFrame]
ConfigFn = Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]]


@dataclass(frozen=True)
class ReaderSpec:
    """Metadata and implementation of one registered VLM dataset reader.

    ``tasks``: the tasks it can provide (``configurable_tasks``: the entry's ``tasks`` picks among them);
    ``needs_path``: the entry's ``path`` is required (the publisher's files); ``sources(spec, config)``:
    the canonical datasets it is built from (None: it reads no canonical shards); ``modalities(spec,
    config)``: the modalities its tables can hold (None: any, known only once the files are read).
    """

    name: str
    tasks: tuple[str, ...]
    needs_path: bool
    configurable_tasks: bool
    description: str
    read: Read = field(repr=False, compare=False)
    sources: ConfigFn | None = field(default=None, repr=False, compare=False)
    modalities: ConfigFn | None = field(default=None, repr=False, compare=False)

    def provided_tasks(self, spec: Mapping[str, Any]) -> list[str]:
        """The tasks a ``vlm.datasets`` entry using this reader provides."""
        if self.configurable_tasks:
            return list(spec.get("tasks", self.tasks))
        return list(self.tasks)


_READERS: dict[str, ReaderSpec] = {}
READERS: Mapping[str, ReaderSpec] = MappingProxyType(_READERS)


def register(
    name: str,
    *,
    tasks: tuple[str, ...],
    needs_path: bool = True,
    configurable_tasks: bool = False,
    sources: ConfigFn | None = None,
    modalities: ConfigFn | None = None,
) -> Callable[[Read], Read]:
    """Decorator registering ``read(name, spec, task, ctx)`` as adapter ``name``; its docstring's first
    paragraph is the description."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"reader {name!r}: unknown task(s) {unknown}")

    def deco(fn: Read) -> Read:
        if name in _READERS:
            raise ValueError(f"VLM dataset reader {name!r} registered twice")
        doc = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        _READERS[name] = ReaderSpec(name, tuple(tasks), needs_path, configurable_tasks, doc, fn, sources,
                                    modalities)
        return fn

    return deco


def get_reader(name: Any, *, where: str = "adapter") -> ReaderSpec:
    """The reader registered as ``name``; unknown raises ``ConfigError`` naming ``where``."""
    if name not in _READERS:
        raise ConfigError(f"{where}: unknown adapter {name!r} (one of {tuple(_READERS)})")
    return _READERS[name]
