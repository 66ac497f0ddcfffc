"""Dispatch: a ``vlm.datasets`` entry -> its registered reader (:mod:`.registry`) -> sampled sample table."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medfm_robust.config import with_defaults
from medfm_robust.errors import ConfigError
from medfm_robust.perturb.registry import MODALITIES
from medfm_robust.vlm.datasets.common import write_samples
from medfm_robust.vlm.datasets.registry import BuildContext, get_reader
from medfm_robust.vlm.datasets.sampling import sample_splits

log = logging.getLogger(__name__)


def dataset_tasks(spec: Mapping[str, Any]) -> list[str]:
    """The tasks a ``vlm.datasets`` entry provides."""
    return get_reader(spec["adapter"]).provided_tasks(spec)


def dataset_sources(spec: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Canonical datasets a ``vlm.datasets`` entry is built from (none for a publisher reader)."""
    reader = get_reader(spec["adapter"])
    return reader.sources(spec, config) if reader.sources is not None else []


def dataset_modalities(spec: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Modalities a VLM dataset can contain (this decides which perturbation files it gets): the reader's
    own answer (the demo: its sources' and showcase modalities), else every modality, since a publisher's
    modalities are only known once its files are read (files of types whose modalities are absent are
    written empty)."""
    reader = get_reader(spec.get("adapter"))
    return reader.modalities(spec, config) if reader.modalities is not None else list(MODALITIES)


def dataset_root(name: str, spec: Mapping[str, Any], resources_dir: str | Path) -> Path:
    """The entry's ``path``: as given when absolute or existing, else under ``resources_dir``."""
    if not spec.get("path"):
        raise ConfigError(f"vlm.datasets.{name}.path: required for adapter '{spec['adapter']}'")
    root = Path(spec["path"])
    if not root.is_absolute() and not root.exists():
        root = Path(resources_dir) / root
    return root


def build_sample_table(
    name: str, spec: Mapping[str, Any], task: str, *, sampling: Mapping[str, Any], seed: int,
    shards: Sequence[str | Path] = (), resources_dir: str | Path = ".", perturb_max_images: int | None = None,
) -> pd.DataFrame:
    """Read dataset ``name`` (a ``vlm.datasets`` entry) for ``task`` and apply ``sampling``.

    ``shards``: canonical shards (demo adapter); ``perturb_max_images``: see
    :func:`~medfm_robust.vlm.datasets.demo.build_demo` (default: the demo spec's ``max_test_images``,
    which should equal ``perturb.max_images``).
    """
    spec = with_defaults("vlm.datasets.*", spec)
    adapter = spec.get("adapter")
    reader = get_reader(adapter, where=f"vlm.datasets.{name}.adapter")
    if task not in reader.provided_tasks(spec):
        raise ConfigError(f"vlm.datasets.{name}: adapter '{adapter}' does not provide task '{task}'")
    root = dataset_root(name, spec, resources_dir) if reader.needs_path else None
    df = reader.read(name, spec, task, BuildContext(root, shards, seed, perturb_max_images))
    return sample_splits(df, sampling, dataset=name, task=task, seed=seed)


def build_and_write(out: str | Path, name: str, spec: Mapping[str, Any], task: str, **kwargs: Any) -> None:
    """:func:`build_sample_table` then :func:`write_samples` to ``out`` (logs per-split/modality counts)."""
    df = build_sample_table(name, spec, task, **kwargs)
    counts = df.groupby(["split", "modality"]).size().to_dict()
    log.info("%s/%s: %d samples %s", name, task, len(df), counts)
    write_samples(out, df)
