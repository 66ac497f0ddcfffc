"""Ingestion: one dataset (any adapter) -> ``{split}.parquet`` canonical shards + ``ingest_report.json``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medfm_robust.config import with_defaults
from medfm_robust.data.registry import Item, dataset_modality, get_adapter
from medfm_robust.data.shards import (
    SPLITS,
    assign_splits,
    check_fractions,
    prepare_sample,
    sample_row,
    shard_table,
    write_shard,
)
from medfm_robust.errors import ConfigError, DataError
from medfm_robust.intensity import apply_policy, parse_policy, policy_json
from medfm_robust.io import set_max_pixels, write_json_atomic
from medfm_robust.seeding import unit_hash

log = logging.getLogger(__name__)


def dataset_root(dataset: str, spec: Mapping[str, Any]) -> Path | None:
    """The dataset's folder (``spec['path']``) for adapters that read files, else None."""
    adapter = get_adapter(spec["adapter"])
    if not adapter.needs_path:
        return None
    if not spec.get("path"):
        raise ConfigError(f"config key 'datasets.{dataset}.path': required for adapter '{adapter.name}'")
    return Path(spec["path"])


def check_dataset_paths(config: MutableMapping[str, Any]) -> None:
    """Check every real dataset's folder exists and each modality agrees with its adapter.

    A dataset whose config omits ``modality`` gets its adapter's (filled in place, like the schema's
    defaults), so every later stage can read ``config["datasets"][name]["modality"]``. Also checks
    ``data.splits``. Raises one ``ConfigError`` listing every problem, each naming the config key (and
    the path for a missing folder).
    """
    problems = []
    if "splits" in config.get("data", {}):
        try:
            check_fractions(config["data"]["splits"])
        except ConfigError as exc:
            problems.append(str(exc))
    for name, spec in sorted(config.get("datasets", {}).items()):
        try:
            spec["modality"] = dataset_modality(name, spec)
            parse_policy(with_defaults("datasets.*", spec)["intensity"], f"datasets.{name}.intensity")
            if spec.get("group_by") is not None and spec["adapter"] != "folder":
                raise ConfigError(
                    f"config key 'datasets.{name}.group_by': only the folder adapter reads it "
                    "(brain_tumor groups by cjdata.PID)"
                )
            root = dataset_root(name, spec)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if root is not None and not root.is_dir():
            problems.append(
                f"config key 'datasets.{name}.path': dataset folder not found: {root} "
                "(see resources/README.md)"
            )
    if problems:
        raise ConfigError("\n  ".join(problems))


def _ordered(dataset: str, items: list[Item], generated: bool) -> list[Item]:
    """Items sorted by id (generated sets) or by a hash of their id (real sets, so that an ``n_images``
    cap takes a file-order-independent, unbiased subset)."""
    ids: dict[str, Item] = {}
    for it in items:
        if it.image_id in ids:
            raise DataError(
                f"{dataset}: image id '{it.image_id}' occurs twice ({ids[it.image_id].source}, {it.source})"
            )
        ids[it.image_id] = it
    if generated:
        return sorted(items, key=lambda it: it.image_id)
    return sorted(items, key=lambda it: (unit_hash("subset", dataset, it.image_id), it.image_id))


@dataclass
class _ImageReader:
    """Loads one listed item through the intensity policy into an encoded shard row (None: empty mask;
    a ``DataError`` is returned, not raised, so the caller applies ``on_error``); records patient groups."""

    dataset: str
    modality: str
    policy: Any
    policy_key: str
    size: int | None
    generated: bool
    intensity: str = ""
    groups: dict[str, str] = field(default_factory=dict)

    def __call__(self, it: Item) -> dict[str, Any] | DataError | None:
        try:
            image, mask = it.load()
            # generated 16-bit data are drawn over the whole dtype range, which is their value range
            image, value_range = apply_policy(
                image, self.policy, it.source, full_dtype_range=self.generated, key=self.policy_key
            )
            sample = prepare_sample(it.image_id, image, mask, it.source, self.size, value_range)
            group = it.group() if it.group is not None else None
        except DataError as exc:
            return exc
        if sample is None:
            return None
        row = sample_row(sample, self.dataset, self.modality, self.intensity)
        if group is not None:
            self.groups[it.image_id] = group
        return row


@dataclass
class _Outcome:
    """The items' fate: encoded rows kept, empty masks and skipped (corrupt) files."""

    kept: list[dict[str, Any]] = field(default_factory=list)  # encoded rows (PNG bytes), to bound memory
    empty: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The report's counts and lists (sorted by image id)."""
        return {
            "n_kept": len(self.kept),
            "n_excluded_empty_mask": len(self.empty),
            "excluded_empty_mask": sorted(self.empty, key=lambda r: r["image_id"]),
            "n_skipped": len(self.skipped),
            "skipped": sorted(self.skipped, key=lambda r: r["image_id"]),
        }


def _read_items(
    items: list[Item], reader: _ImageReader, cap: int | None, on_error: str, workers: int, progress: bool
) -> _Outcome:
    """Read ``items`` in order with ``workers`` threads until ``cap`` rows are kept (none: ``DataError``)."""
    out = _Outcome()
    bar = tqdm(total=len(items), desc=f"ingest {reader.dataset}", unit="img", disable=not progress,
               mininterval=2)
    with ThreadPoolExecutor(max_workers=max(int(workers), 1)) as pool:
        batch = max(int(workers), 1) * 4
        for start in range(0, len(items), batch):  # batches in order, so an n_images cap stays exact
            if cap is not None and len(out.kept) >= cap:
                break
            chunk = items[start : start + batch]
            for it, result in zip(chunk, pool.map(reader, chunk), strict=True):
                bar.update()
                if cap is not None and len(out.kept) >= cap:
                    break
                if isinstance(result, DataError):
                    if on_error != "skip":
                        raise result
                    log.warning("skipping %s: %s", it.source, result)
                    out.skipped.append({"image_id": it.image_id, "source": it.source, "error": str(result)})
                elif result is None:
                    out.empty.append({"image_id": it.image_id, "source": it.source})
                else:
                    out.kept.append(result)
    bar.close()
    if not out.kept:
        raise DataError(
            f"{reader.dataset}: no usable image (listed {len(items)}, empty masks {len(out.empty)}, "
            f"skipped {len(out.skipped)})"
        )
    return out


def _write_splits(
    dataset: str,
    kept: list[dict[str, Any]],
    groups: Mapping[str, str],
    fractions: Mapping[str, float],
    out: Path,
) -> tuple[dict[str, int], dict[str, str], list[str]]:
    """Assign splits (by patient group when every kept image has one) and write ``out/{split}.parquet``.
    Returns the per-split counts, each image's split and the grouped image ids (empty: no groups)."""
    kept_ids = [r["image_id"] for r in kept]
    grouped = [i for i in kept_ids if i in groups]
    if grouped and len(grouped) != len(kept_ids):
        raise DataError(f"{dataset}: {len(kept_ids) - len(grouped)} image(s) have no patient group")
    splits = assign_splits(dataset, kept_ids, fractions, groups if grouped else None)
    counts = {}
    for split in SPLITS:
        rows = [r for r in kept if splits[r["image_id"]] == split]
        counts[split] = len(rows)
        write_shard(out / f"{split}.parquet", shard_table(rows, split))
    return counts, splits, grouped


def _groups_per_split(
    groups: Mapping[str, str], grouped: list[str], splits: Mapping[str, str]
) -> dict[str, int] | None:
    """Distinct patient groups per split (None without groups)."""
    if not grouped:
        return None
    return {sp: len({groups[i] for i in grouped if splits[i] == sp}) for sp in SPLITS}


def ingest_dataset(
    dataset: str,
    spec: Mapping[str, Any],
    data_cfg: Mapping[str, Any],
    out_dir: str | Path,
    *,
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Read one dataset through its adapter and write ``out_dir/{train,val,test}.parquet`` and
    ``out_dir/ingest_report.json`` (all atomically). Returns the report.

    Each image goes through the dataset's intensity policy (``spec['intensity']``,
    :func:`medfm_robust.intensity.apply_policy`; recorded in the ``intensity`` and ``value_range``
    columns), then is resized once to ``data_cfg['image_size']`` (null keeps them); images with empty
    masks are excluded and counted, and a corrupt file raises ``DataError`` naming it, unless
    ``data_cfg['on_error'] == 'skip'``, which lists it in the report instead. ``workers`` threads read
    and encode images (file decoding releases the GIL); the output does not depend on it. ``data_cfg``: the
    validated ``data`` config (:func:`medfm_robust.config.default_config` holds the schema's defaults).
    """
    adapter = get_adapter(spec["adapter"])
    modality = dataset_modality(dataset, spec)
    root = dataset_root(dataset, spec)
    if root is not None and not root.is_dir():
        raise ConfigError(f"config key 'datasets.{dataset}.path': dataset folder not found: {root}")
    on_error = data_cfg["on_error"]
    size = data_cfg["image_size"]
    set_max_pixels(data_cfg["max_pixels"])  # size guard of every image read (io)
    cap = None if adapter.generated else spec.get("n_images")
    policy_key = f"datasets.{dataset}.intensity"
    policy = parse_policy(with_defaults("datasets.*", spec)["intensity"], policy_key)
    items = _ordered(dataset, adapter.list_items(dataset, spec, root, seed), adapter.generated)
    reader = _ImageReader(dataset, modality, policy, policy_key, size, adapter.generated, policy_json(policy))
    got = _read_items(items, reader, cap, on_error, workers, progress)
    groups = reader.groups
    out = Path(out_dir)
    counts, splits, grouped = _write_splits(dataset, got.kept, groups, data_cfg["splits"], out)
    report = {
        "dataset": dataset,
        "adapter": adapter.name,
        "modality": modality,
        "image_size": size,
        "splits": dict(data_cfg["splits"]),
        "counts": counts,
        "n_listed": len(items),
        **got.summary(),
        "n_images_cap": cap,
        "on_error": on_error,
        "intensity": policy,
        "n_groups": len(set(groups.values())) if grouped else None,
        "groups_per_split": _groups_per_split(groups, grouped, splits),
    }
    write_json_atomic(out / "ingest_report.json", report)
    log.info(
        "%s: %s kept (%s), %d empty masks, %d skipped",
        dataset, len(got.kept), counts, len(got.empty), len(got.skipped),
    )
    return report
