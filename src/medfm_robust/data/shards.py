"""Canonical shard contract: image/mask preparation, hash splits and Parquet I/O.

A canonical shard (``paths.data_shard(dataset, split)``) holds one row per image, sorted by
``image_id``, with the columns of :data:`SHARD_SCHEMA` (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from medfm_robust.boxes import box_from_mask
from medfm_robust.errors import ConfigError, DataError
from medfm_robust.io import decode_png, encode_png, write_parquet_atomic
from medfm_robust.seeding import unit_hash

SPLITS: tuple[str, ...] = ("train", "val", "test")

SHARD_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("dataset", pa.string()),
        ("modality", pa.string()),
        ("split", pa.string()),
        ("image_png", pa.binary()),
        ("mask_png", pa.binary()),
        ("box", pa.list_(pa.int32(), 4)),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("channels", pa.int32()),
        ("source", pa.string()),
        ("intensity", pa.string()),
        ("value_range", pa.list_(pa.float64(), 2)),
    ]
)


@dataclass(frozen=True)
class PreparedSample:
    """One image ready for a shard: stored image, binary mask and inclusive box.

    ``image`` is ``H x W`` or ``H x W x 3``, uint8 or uint16; ``mask`` is ``H x W`` bool;
    ``box`` is ``[x_min, y_min, x_max, y_max]`` with inclusive max, in pixels of ``image``;
    ``value_range`` the stored values meaning black and white (:mod:`medfm_robust.intensity`).
    """

    image_id: str
    image: np.ndarray
    mask: np.ndarray
    box: tuple[int, int, int, int]
    source: str
    value_range: tuple[float, float] = (0.0, 255.0)


def check_image(image: np.ndarray, source: str) -> np.ndarray:
    """Check an image array is ``H x W`` or ``H x W x 3`` uint8/uint16 (RGB uint16 is rejected)."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{source}: image dtype {arr.dtype} is not uint8 or uint16")
    if arr.ndim == 3 and arr.shape[2] != 3:
        raise DataError(f"{source}: image has {arr.shape[2]} channels (expected 1 or 3)")
    if arr.ndim not in (2, 3):
        raise DataError(f"{source}: image has shape {arr.shape} (expected H x W or H x W x 3)")
    if arr.ndim == 3 and arr.dtype == np.uint16:
        raise DataError(f"{source}: 16-bit colour images are not supported (convert to 8-bit RGB)")
    if min(arr.shape[:2]) < 1:
        raise DataError(f"{source}: image is empty (shape {arr.shape})")
    return arr


def binarise_mask(mask: np.ndarray, threshold: int, source: str, *, unit_labels: bool = True) -> np.ndarray:
    """Reduce a mask to ``H x W`` bool: foreground where the value is strictly above ``threshold``.

    Colour masks are reduced by the per-pixel maximum over channels. With ``unit_labels`` (lossless
    formats only), a mask whose maximum is 1 is read as a 0/1 label image (foreground ``> 0``); JPEG
    masks must pass ``unit_labels=False`` so that compression noise is never foreground.
    """
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return arr.copy() if arr.ndim == 2 else arr.any(axis=2)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.ndim != 2:
        raise DataError(f"{source}: mask has shape {np.asarray(mask).shape} (expected H x W)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{source}: mask dtype {arr.dtype} is not an integer type")
    if unit_labels and arr.size and int(arr.max()) == 1:
        return arr > 0
    return arr > threshold


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size x size`` with Pillow's antialiased bilinear filter (area-weighted when shrinking).

    Works per channel in float32 and rounds back to the input dtype (uint8 or uint16 kept).
    """
    if image.shape[:2] == (size, size):
        return image
    chans = image[:, :, None] if image.ndim == 2 else image
    limit = np.iinfo(image.dtype).max
    out = np.empty((size, size, chans.shape[2]), dtype=image.dtype)
    for c in range(chans.shape[2]):
        pil = Image.fromarray(np.ascontiguousarray(chans[:, :, c], dtype=np.float32))
        res = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
        out[:, :, c] = np.clip(np.rint(res), 0, limit).astype(image.dtype)
    return out[:, :, 0] if image.ndim == 2 else out


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an ``H x W`` bool mask to ``size x size``."""
    if mask.shape == (size, size):
        return mask
    pil = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(pil.resize((size, size), Image.Resampling.NEAREST)) > 0


def prepare_sample(
    image_id: str,
    image: np.ndarray,
    mask: np.ndarray,
    source: str,
    image_size: int | None,
    value_range: tuple[float, float] = (0.0, 255.0),
) -> PreparedSample | None:
    """Validate, optionally resize (image bilinear/area, mask nearest) and box one image (already through
    its intensity policy, ``value_range`` from :func:`medfm_robust.intensity.apply_policy`).

    Returns None when the mask is empty (before or after resizing); the caller counts it.
    """
    image = check_image(image, source)
    if mask.shape != image.shape[:2]:
        raise DataError(f"{source}: mask size {mask.shape} differs from image size {image.shape[:2]}")
    if image_size is not None:
        image = resize_image(image, image_size)
        mask = resize_mask(mask, image_size)
    box = box_from_mask(mask)
    if box is None:
        return None
    return PreparedSample(image_id, image, mask.astype(bool), box, source, value_range)


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Return the train/val/test fractions; they must be non-negative and sum to 1."""
    missing = [s for s in SPLITS if s not in fractions]
    if missing:
        raise ConfigError(f"config key 'data.splits': missing {', '.join(missing)}")
    fr = {s: float(fractions[s]) for s in SPLITS}
    if any(v < 0 for v in fr.values()) or abs(sum(fr.values()) - 1.0) > 1e-6:
        raise ConfigError(f"config key 'data.splits': fractions must be >= 0 and sum to 1 (got {fr})")
    return fr


def split_sizes(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Images per split for ``n`` images: largest-remainder rounding of ``fraction * n``.

    When ``n`` allows it, every split with a positive fraction gets at least one image (taken from the
    largest split), so tiny datasets still have train, val and test images.
    """
    fr = check_fractions(fractions)
    raw = {s: fr[s] * n for s in SPLITS}
    sizes = {s: int(np.floor(raw[s] + 1e-9)) for s in SPLITS}
    by_remainder = sorted(SPLITS, key=lambda s: (-(raw[s] - sizes[s]), SPLITS.index(s)))
    for s in by_remainder[: n - sum(sizes.values())]:
        sizes[s] += 1
    for s in SPLITS:
        if fr[s] > 0 and sizes[s] == 0:
            donor = max(SPLITS, key=lambda d: (sizes[d], -SPLITS.index(d)))
            if sizes[donor] > 1:
                sizes[donor] -= 1
                sizes[s] += 1
    return sizes


def assign_splits(
    dataset: str,
    image_ids: Iterable[str],
    fractions: Mapping[str, float],
    groups: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Assign every image id to train/val/test from a hash of ``(dataset, image_id)``, or of
    ``(dataset, group)`` when ``groups`` maps image ids to a patient (a patient's images share a split).

    Units (images, or groups) are ordered by ``unit_hash("split", dataset, unit)``; the split sizes in
    images are :func:`split_sizes`; a unit goes to the split in which the middle of its run of images
    falls (train first, then val, then test). A split with a positive fraction that got no unit takes the
    nearest unit of a neighbouring split that has two or more. Never depends on file order; without
    ``groups`` (or with one image per group named like it) the first ``sizes['train']`` images in hash
    order go to train, the next ``sizes['val']`` to val, the rest to test.
    """
    ids = sorted(set(image_ids))
    unit_of = {i: (groups[i] if groups is not None else i) for i in ids}
    members: dict[str, list[str]] = {}
    for i in ids:
        members.setdefault(unit_of[i], []).append(i)
    units = sorted(members, key=lambda u: (unit_hash("split", dataset, u), u))
    sizes = split_sizes(len(ids), fractions)
    bounds = np.cumsum([sizes[s] for s in SPLITS])
    # cut[k]: index of the first unit of split k (cut[0] = 0, cut[len(SPLITS)] = len(units))
    starts = np.cumsum([0] + [len(members[u]) for u in units])
    mids = (starts[:-1] + starts[1:]) / 2.0
    which = [int(np.searchsorted(bounds, m, side="right")) for m in mids]
    cut = [0] + [sum(1 for w in which if w <= k) for k in range(len(SPLITS) - 1)] + [len(units)]
    fr = check_fractions(fractions)
    for k, name in enumerate(SPLITS):
        if fr[name] <= 0 or cut[k + 1] > cut[k]:
            continue
        if k > 0 and cut[k] - cut[k - 1] >= 2:
            cut[k] -= 1  # the previous split's last unit moves in
        elif k + 1 < len(SPLITS) and cut[k + 2] - cut[k + 1] >= 2:
            cut[k + 1] += 1  # the next split's first unit moves in
    out: dict[str, str] = {}
    for k, name in enumerate(SPLITS):
        for u in units[cut[k] : cut[k + 1]]:
            for i in members[u]:
                out[i] = name
    return out


def sample_row(
    sample: PreparedSample, dataset: str, modality: str, intensity: str = '"none"'
) -> dict[str, Any]:
    """One shard row (without ``split``): image and mask as lossless PNG bytes, box, size, source, the
    intensity policy (canonical JSON, :func:`medfm_robust.intensity.policy_json`) and ``value_range``."""
    image = sample.image
    return {
        "image_id": sample.image_id,
        "dataset": dataset,
        "modality": modality,
        "image_png": encode_png(image),
        "mask_png": encode_png(sample.mask.astype(np.uint8) * 255),
        "box": list(sample.box),
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "channels": 1 if image.ndim == 2 else int(image.shape[2]),
        "source": sample.source,
        "intensity": intensity,
        "value_range": [float(v) for v in sample.value_range],
    }


def shard_table(rows: Sequence[Mapping[str, Any]], split: str) -> pa.Table:
    """The canonical shard table of one split from :func:`sample_row` rows (sorted by ``image_id``)."""
    ordered = sorted(rows, key=lambda r: r["image_id"])
    cols = {name: [split if name == "split" else r[name] for r in ordered] for name in SHARD_SCHEMA.names}
    return pa.table(cols, schema=SHARD_SCHEMA)


def write_shard(path: str | Path, table: pa.Table) -> None:
    """Write a shard atomically (zstd Parquet)."""
    if table.schema != SHARD_SCHEMA:
        raise DataError(f"{path}: table does not follow the canonical shard schema")
    write_parquet_atomic(path, table)


def read_shard(path: str | Path) -> pa.Table:
    """Read a canonical shard, checking its columns; a missing or foreign file raises ``DataError``."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: shard not found")
    try:
        table = pq.read_table(p)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"{p}: cannot read Parquet ({exc})") from exc
    missing = [n for n in SHARD_SCHEMA.names if n not in table.column_names]
    if missing:
        raise DataError(f"{p}: not a canonical shard (missing columns {missing})")
    return table.select(SHARD_SCHEMA.names).cast(SHARD_SCHEMA)


def decode_row(row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Decode a shard row's image (uint8/uint16, ``H x W[ x 3]``) and mask (``H x W`` bool)."""
    where = f"{row.get('dataset', '?')}/{row.get('image_id', '?')}"
    image = decode_png(row["image_png"], source=f"{where} image_png")
    mask = decode_png(row["mask_png"], source=f"{where} mask_png") > 0
    return image, mask
