"""Ingestion: one dataset (any adapter) -> ``{split}.parquet`` canonical shards + ``ingest_report.json``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

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
from medfm_robust.io import DEFAULT_MAX_PIXELS, set_max_pixels, write_json_atomic
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
            parse_policy(spec.get("intensity", "none"), f"datasets.{name}.intensity")
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
    and encode images (file decoding releases the GIL); the output does not depend on it.
    """
    adapter = get_adapter(spec["adapter"])
    modality = dataset_modality(dataset, spec)
    root = dataset_root(dataset, spec)
    if root is not None and not root.is_dir():
        raise ConfigError(f"config key 'datasets.{dataset}.path': dataset folder not found: {root}")
    on_error = data_cfg.get("on_error", "fail")
    size = data_cfg.get("image_size")
    set_max_pixels(data_cfg.get("max_pixels", DEFAULT_MAX_PIXELS))  # size guard of every image read (io)
    cap = None if adapter.generated else spec.get("n_images")
    policy_key = f"datasets.{dataset}.intensity"
    policy = parse_policy(spec.get("intensity", "none"), policy_key)
    intensity = policy_json(policy)
    items = _ordered(dataset, adapter.list_items(dataset, spec, root, seed), adapter.generated)
    kept: list[dict[str, Any]] = []  # encoded rows (PNG bytes), not arrays, to bound memory
    empty: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    groups: dict[str, str] = {}

    def process(it: Item) -> dict[str, Any] | DataError | None:
        try:
            image, mask = it.load()
            # generated 16-bit data are drawn over the whole dtype range, which is their value range
            image, value_range = apply_policy(
                image, policy, it.source, full_dtype_range=adapter.generated, key=policy_key
            )
            sample = prepare_sample(it.image_id, image, mask, it.source, size, value_range)
            group = it.group() if it.group is not None else None
        except DataError as exc:
            return exc
        if sample is None:
            return None
        row = sample_row(sample, dataset, modality, intensity)
        if group is not None:
            groups[it.image_id] = group
        return row

    bar = tqdm(total=len(items), desc=f"ingest {dataset}", unit="img", disable=not progress, mininterval=2)
    with ThreadPoolExecutor(max_workers=max(int(workers), 1)) as pool:
        batch = max(int(workers), 1) * 4
        for start in range(0, len(items), batch):  # batches in order, so an n_images cap stays exact
            if cap is not None and len(kept) >= cap:
                break
            chunk = items[start : start + batch]
            for it, result in zip(chunk, pool.map(process, chunk), strict=True):
                bar.update()
                if cap is not None and len(kept) >= cap:
                    break
                if isinstance(result, DataError):
                    if on_error != "skip":
                        raise result
                    log.warning("skipping %s: %s", it.source, result)
                    skipped.append({"image_id": it.image_id, "source": it.source, "error": str(result)})
                elif result is None:
                    empty.append({"image_id": it.image_id, "source": it.source})
                else:
                    kept.append(result)
    bar.close()
    if not kept:
        raise DataError(
            f"{dataset}: no usable image (listed {len(items)}, empty masks {len(empty)}, "
            f"skipped {len(skipped)})"
        )
    kept_ids = [r["image_id"] for r in kept]
    grouped = [i for i in kept_ids if i in groups]
    if grouped and len(grouped) != len(kept_ids):
        raise DataError(f"{dataset}: {len(kept_ids) - len(grouped)} image(s) have no patient group")
    splits = assign_splits(dataset, kept_ids, data_cfg.get("splits", {}), groups if grouped else None)
    out = Path(out_dir)
    counts = {}
    for split in SPLITS:
        rows = [r for r in kept if splits[r["image_id"]] == split]
        counts[split] = len(rows)
        write_shard(out / f"{split}.parquet", shard_table(rows, split))
    report = {
        "dataset": dataset,
        "adapter": adapter.name,
        "modality": modality,
        "image_size": size,
        "splits": dict(data_cfg.get("splits", {})),
        "counts": counts,
        "n_listed": len(items),
        "n_kept": len(kept),
        "n_excluded_empty_mask": len(empty),
        "excluded_empty_mask": sorted(empty, key=lambda r: r["image_id"]),
        "n_skipped": len(skipped),
        "skipped": sorted(skipped, key=lambda r: r["image_id"]),
        "n_images_cap": cap,
        "on_error": on_error,
        "intensity": policy,
        "n_groups": len(set(groups.values())) if grouped else None,
        "groups_per_split": (
            {sp: len({groups[i] for i in grouped if splits[i] == sp}) for sp in SPLITS} if grouped else None
        ),
    }
    write_json_atomic(out / "ingest_report.json", report)
    log.info(
        "%s: %s kept (%s), %d empty masks, %d skipped", dataset, len(kept), counts, len(empty), len(skipped)
    )
    return report
