"""Inputs of a segmentation evaluation: the evaluated test images and the perturbed rows to score.

:func:`select_image_ids` picks the evaluated subset (the same in every mode: test images that have perturbed
rows first, then the others, each group in ``image_id`` order, cut to ``max_images``); the loaders turn shard
rows into :class:`Sample` objects (stored pixels, boolean mask, box prompt, row metadata).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medfm_robust.boxes import require_box
from medfm_robust.errors import DataError
from medfm_robust.io import array_hash, decode_png, read_parquet_checked
from medfm_robust.seg.prompts import BoxJitter, jitter_box

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One image to score: stored pixels, boolean GT mask, box prompt, row metadata and the stored values
    meaning black and white (the shard's ``value_range``; None only for 8-bit images)."""

    image_id: str
    image: np.ndarray
    mask: np.ndarray
    box: np.ndarray
    meta: dict[str, Any]
    image_hash: str = ""
    value_range: tuple[float, float] | None = None


def read_table(path: str | Path, columns: Sequence[str]) -> pd.DataFrame:
    """A shard with at least ``columns`` (all of its columns are read)."""
    return read_parquet_checked(path, columns, kind="shard")


def row_value_range(
    row: Any, image: np.ndarray, src: str, default: tuple[float, float] | None = None
) -> tuple[float, float] | None:
    """A shard row's ``value_range`` column, checked (absent or null: ``default``, which only an 8-bit
    image may lack: its range is then [0, 255])."""
    from medfm_robust.intensity import check_value_range

    value = getattr(row, "value_range", None)
    if value is not None:
        return check_value_range([float(v) for v in value], f"{src} value_range")
    if default is None and image.dtype != np.uint8:
        raise DataError(f"{src}: {image.dtype} image without a value_range column (re-run the ingestion)")
    return default


def select_image_ids(
    test_shard: str | Path, perturbed: Sequence[str | Path], max_images: int | None
) -> list[str]:
    """The evaluated test images: those with rows in any ``perturbed`` shard first, then the others, each
    group sorted by ``image_id``, cut to ``max_images``. Rows of a perturbed shard for an image that is not
    in the test shard are a :class:`DataError`."""
    test_ids = sorted(set(read_table(test_shard, ("image_id",))["image_id"]))
    known = set(test_ids)
    perturbed_ids: set[str] = set()
    for path in perturbed:
        ids = set(read_parquet_checked(path, ["image_id"], kind="shard", columns=["image_id"])["image_id"])
        unknown = sorted(ids - known)
        if unknown:
            raise DataError(f"{path}: rows for image(s) not in the test shard {test_shard}: {unknown[:5]}")
        perturbed_ids |= ids
    ordered = [i for i in test_ids if i in perturbed_ids] + [i for i in test_ids if i not in perturbed_ids]
    return ordered if max_images is None else ordered[:max_images]


def load_test_samples(
    test_shard: str | Path, dataset: str, image_ids: Sequence[str] | None, jitter: BoxJitter
) -> list[Sample]:
    """Clean test images ``image_ids`` of ``dataset`` (all when None), sorted by id, with GT masks and boxes.

    The stored ``box`` must equal the tight box of the stored mask (the contract of the canonical shard).
    """
    table = read_table(test_shard, ("image_id", "dataset", "modality", "image_png", "mask_png", "box"))
    if image_ids is not None:
        missing = sorted(set(image_ids) - set(table["image_id"]))
        if missing:
            raise DataError(f"{test_shard}: image(s) {missing[:5]} not in the test shard")
        table = table[table["image_id"].isin(set(image_ids))]
    table = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    if table.empty:
        raise DataError(f"{test_shard}: no test images for dataset {dataset}")
    samples = []
    for row in table.itertuples(index=False):
        src = f"{test_shard} [{row.image_id}]"
        image = decode_png(row.image_png, source=src)
        mask = decode_png(row.mask_png, source=src) > 0
        if mask.ndim != 2 or mask.shape != image.shape[:2]:
            raise DataError(f"{src}: mask shape {mask.shape} differs from image {image.shape[:2]}")
        tight = require_box(mask) if mask.any() else None
        if tight is None:
            raise DataError(f"{src}: empty ground-truth mask (no box prompt)")
        if [int(v) for v in row.box] != tight.tolist():
            raise DataError(
                f"{src}: stored box {list(row.box)} is not the tight box {tight.tolist()} of the mask"
            )
        box = jitter_box(tight, mask.shape, jitter, dataset, row.image_id)
        value_range = row_value_range(row, image, src)
        meta = {
            "modality": row.modality,
            "perturbation": "clean",
            "category": "clean",
            "level": 0,
            "ssim": 1.0,
            "in_band": True,
            "reachable": True,
        }
        samples.append(Sample(row.image_id, image, mask, box, meta, array_hash(image), value_range))
    return samples


def _perturbed_sample(
    row: Any, src: str, perturbation: str, clean: Mapping[str, Sample], jitter: BoxJitter, dataset: str
) -> Sample | None:
    """One perturbed shard row as a :class:`Sample` (None: the label left the image, nothing to score)."""
    base = clean[row.image_id]
    if row.box is None:
        if row.mask_png is None or (decode_png(row.mask_png, source=src) > 0).any():
            raise DataError(f"{src}: null box without an empty moved mask")
        return None
    image = decode_png(row.image_png, source=src)
    if image.shape[:2] != base.mask.shape:
        raise DataError(f"{src}: image size {image.shape[:2]} differs from the clean image {base.mask.shape}")
    box = np.asarray([int(v) for v in row.box], dtype=np.int64)
    if row.mask_png is not None:
        mask = decode_png(row.mask_png, source=src) > 0
        if mask.shape != base.mask.shape:
            raise DataError(f"{src}: moved mask size {mask.shape} differs from the image {base.mask.shape}")
        h, w = mask.shape
        if not (0 <= box[0] <= box[2] < w and 0 <= box[1] <= box[3] < h):
            raise DataError(f"{src}: box {box.tolist()} outside the {w} x {h} image")
        box_f = jitter_box(box, mask.shape, jitter, dataset, row.image_id)
    else:
        mask = base.mask
        if box.tolist() != require_box(mask).tolist():
            raise DataError(f"{src}: box {box.tolist()} differs from the clean box of a non-moving type")
        box_f = base.box
    meta = {
        "modality": base.meta["modality"],
        "perturbation": perturbation,
        "category": row.category,
        "level": int(row.level),
        "ssim": float(row.ssim),
        "in_band": bool(row.in_band),
        "reachable": not str(getattr(row, "reason", "") or "").startswith("unreachable"),
    }
    value_range = row_value_range(row, image, src, base.value_range)  # else the clean image's
    return Sample(row.image_id, image, mask, box_f, meta, array_hash(image), value_range)


def load_perturbed_samples(
    shard: str | Path, perturbation: str, clean: Mapping[str, Sample], jitter: BoxJitter, dataset: str
) -> list[Sample]:
    """Rows of a perturbed shard for the selected clean images, in shard order (image id, level).

    The GT mask is the shard's ``mask_png`` when set (label-moving types), else the clean mask; the box is the
    shard's ``box`` (the moved one for label-moving types, else it must equal the clean box). Rows of
    images outside ``clean`` are left out (see :func:`select_image_ids`). A label-moving row whose label left
    the image (null box, empty moved mask) has no box prompt and no object to segment: it is not scored,
    and a warning names it.
    """
    cols = (
        "image_id",
        "perturbation",
        "category",
        "level",
        "image_png",
        "mask_png",
        "box",
        "ssim",
        "in_band",
    )
    table = read_table(shard, cols)
    selected = table[table["image_id"].isin(clean.keys())]
    names = set(table["perturbation"])
    if names and names != {perturbation}:
        raise DataError(f"{shard}: column 'perturbation' holds {sorted(names)}, expected '{perturbation}'")
    selected = selected.sort_values(["image_id", "level"], kind="stable")
    samples = []
    dropped = []
    for row in selected.itertuples(index=False):
        sample = _perturbed_sample(
            row, f"{shard} [{row.image_id} level {row.level}]", perturbation, clean, jitter, dataset
        )
        if sample is None:
            dropped.append(f"{row.image_id} L{row.level}")
        else:
            samples.append(sample)
    if dropped:
        log.warning("%s: %d row(s) not scored, the label left the image: %s", shard, len(dropped), dropped)
    return samples


def batches(samples: Sequence[Sample], batch_size: int) -> Iterator[list[Sample]]:
    """Consecutive batches of images of one size (order kept within each size group)."""
    groups: dict[tuple[int, ...], list[Sample]] = {}
    for s in samples:
        groups.setdefault(tuple(s.image.shape), []).append(s)
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            yield group[i : i + batch_size]


def box_tensor(batch: Sequence[Sample]) -> torch.Tensor:
    """The batch's box prompts, ``B x 4`` float32 (inclusive pixel corners)."""
    return torch.from_numpy(np.stack([s.box for s in batch]).astype(np.float32))
