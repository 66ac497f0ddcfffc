"""Dataset adapter registry: each adapter lists a dataset's images as lazily loaded :class:`Item` s."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medfm_robust.config import with_defaults
from medfm_robust.errors import ConfigError

# (image, mask): image H x W or H x W x 3 uint8/uint16; mask H x W bool (already binarised).
Loaded = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Item:
    """One image of a dataset, loaded on demand.

    ``source`` is the image's path relative to the dataset folder (or a generator tag for demo data),
    so shards do not depend on where the dataset lives. ``load`` raises ``DataError`` naming the file
    when the image or its mask is missing or unreadable. ``group`` (None: the image is its own group)
    returns the image's patient id, read when the image is ingested; all images of a group land in one
    split (:func:`medfm_robust.data.shards.assign_splits`).
    """

    image_id: str
    source: str
    load: Callable[[], Loaded]
    group: Callable[[], str] | None = None


ListItems = Callable[[str, Mapping[str, Any], Path | None, int], list[Item]]


@dataclass(frozen=True)
class Adapter:
    """A dataset reader: its modality (None: named in the config), whether it needs ``path``, and the
    ``list_items(dataset, spec, root, seed)`` function. ``generated`` adapters make their images, so
    ``n_images`` is how many to make rather than a cap."""

    name: str
    modality: str | None
    needs_path: bool
    generated: bool
    list_items: ListItems
    layout: str


ADAPTERS: dict[str, Adapter] = {}


def register(
    name: str, *, modality: str | None, needs_path: bool, layout: str, generated: bool = False
) -> Callable[[ListItems], ListItems]:
    """Decorator registering ``list_items`` under ``name``."""

    def deco(func: ListItems) -> ListItems:
        def filled(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
            return func(dataset, with_defaults("datasets.*", spec), root, seed)

        ADAPTERS[name] = Adapter(name, modality, needs_path, generated, filled, layout)
        return func

    return deco


def get_adapter(name: str) -> Adapter:
    """The adapter called ``name`` (the built-ins are registered by importing :mod:`medfm_robust.data`, whose
    ``__init__`` imports the adapter modules; this module imports none of them)."""
    if name not in ADAPTERS:
        raise ConfigError(f"unknown dataset adapter '{name}' (known: {', '.join(sorted(ADAPTERS))})")
    return ADAPTERS[name]


def dataset_modality(dataset: str, spec: Mapping[str, Any]) -> str:
    """The dataset's modality: the adapter's own, or the one named in the config (which must agree)."""
    adapter = get_adapter(spec["adapter"])
    given = spec.get("modality")
    if adapter.modality is None:
        if not given:
            raise ConfigError(
                f"config key 'datasets.{dataset}.modality': required for adapter '{adapter.name}'"
            )
        return str(given)
    if given and given != adapter.modality:
        raise ConfigError(
            f"config key 'datasets.{dataset}.modality': adapter '{adapter.name}' reads "
            f"{adapter.modality} images, not {given}"
        )
    return adapter.modality
