"""Training data for fine-tuning: canonical shards to tensors, seeded augmentation, box prompts.

Every random draw comes from :func:`medfm_robust.seeding.rng_for` keyed by the identity of the draw
(purpose, dataset, epoch, image id), so the augmented stream is the same for every model and strategy and
independent of batch composition, worker count or resumption.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medfm_robust.boxes import require_box_tensor
from medfm_robust.errors import DataError
from medfm_robust.io import decode_png


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings (config ``finetune.*.augment``).

    Geometric transforms move the mask with the image (the box is recomputed from the moved mask);
    intensity jitter maps ``x -> clip((x - 0.5) * contrast + 0.5 + brightness, 0, 1) ** gamma``.
    ``box_jitter`` shifts each box side by up to that fraction of the box's width/height.
    """

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    intensity: float = 0.3
    contrast: tuple[float, float] = (0.8, 1.2)
    brightness: tuple[float, float] = (-0.08, 0.08)
    gamma: tuple[float, float] = (0.8, 1.25)
    box_jitter: float = 0.05

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> AugmentConfig:
        """Build from a config mapping (missing keys take the defaults above)."""
        cfg = dict(cfg or {})
        for key in ("contrast", "brightness", "gamma"):
            if key in cfg:
                cfg[key] = tuple(float(v) for v in cfg[key])
        return cls(**cfg)


@dataclass
class SegData:
    """One split held in memory.

    Attributes:
        images: ``N x 3 x S x S`` uint8 tensor (8-bit images with range [0, 255]) or float32 in [0, 1] of
            each image's value range (16-bit images).
        masks: ``N x S x S`` bool tensor.
        image_ids: ``N`` image ids (sorted as in the shard).
        dataset: dataset name per image (pretraining mixes datasets).
    """

    images: torch.Tensor
    masks: torch.Tensor
    image_ids: list[str]
    dataset: list[str]

    def __len__(self) -> int:
        return len(self.image_ids)

    def x01(self, index: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Images ``index`` as ``B x 3 x S x S`` float32 in [0, 1]."""
        x = self.images[index]
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def image_to_chw(
    image: np.ndarray, *, source: str, value_range: Sequence[float] | None = None
) -> torch.Tensor:
    """``H x W`` or ``H x W x 3`` uint8/uint16 array to a ``3 x H x W`` tensor.

    uint8 with range [0, 255] (or none) stays uint8 (0..255); otherwise float32 in [0, 1] of the image's
    ``value_range`` (the shard column, :func:`medfm_robust.intensity.to_unit`; required for uint16).
    """
    from medfm_robust.intensity import is_plain_8bit, three_channels, to_unit

    image = three_channels(image, f"{source}: expected an H x W or H x W x 3 image, got shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{source}: unsupported image dtype {image.dtype}")
    if is_plain_8bit(image, value_range):
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if value_range is None:
        raise DataError(f"{source}: {image.dtype} image without a value_range column (re-run the ingestion)")
    return torch.from_numpy(np.ascontiguousarray(to_unit(image, value_range).transpose(2, 0, 1)))


def load_split(
    path: str | Path,
    *,
    size: int | None = None,
    max_images: int | None = None,
) -> SegData:
    """Read a canonical shard (``paths.data_shard``) into memory.

    Args:
        path: the shard (columns per docs/ARCHITECTURE.md).
        size: resize every image (bilinear, antialiased) and mask (nearest) to ``size x size``; ``None``
            keeps the stored size, which must then be the same for every image.
        max_images: keep only the first ``max_images`` rows in ``image_id`` order (``None``: all).

    Raises:
        DataError: missing file or column, undecodable PNG, image/mask size mismatch, empty mask, or
            mixed image sizes with ``size=None``.
    """
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: canonical shard not found")
    table = pq.read_table(p)
    need = {"image_id", "dataset", "image_png", "mask_png"}
    missing = sorted(need - set(table.column_names))
    if missing:
        raise DataError(f"{p}: missing column(s) {missing}")
    cols = table.select(sorted(need | ({"value_range"} & set(table.column_names)))).to_pydict()
    order = sorted(range(len(cols["image_id"])), key=lambda i: str(cols["image_id"][i]))
    if max_images is not None:
        order = order[:max_images]
    images, masks, ids, dsets = [], [], [], []
    for i in order:
        iid = str(cols["image_id"][i])
        src = f"{p} image_id={iid}"
        image = decode_png(cols["image_png"][i], source=f"{src} image_png")
        img = image_to_chw(image, source=src, value_range=cols.get("value_range", [None] * (i + 1))[i])
        mask_arr = decode_png(cols["mask_png"][i], source=f"{src} mask_png")
        if mask_arr.ndim == 3:
            mask_arr = mask_arr.max(axis=2)
        mask = torch.from_numpy(mask_arr > 0)
        if tuple(mask.shape) != tuple(img.shape[1:]):
            raise DataError(
                f"{src}: mask shape {tuple(mask.shape)} differs from image {tuple(img.shape[1:])}"
            )
        if not bool(mask.any()):
            raise DataError(f"{src}: empty mask (no box prompt can be derived)")
        if size is not None and tuple(img.shape[1:]) != (size, size):
            img, mask = _resize_pair(img, mask, size)
        images.append(img)
        masks.append(mask)
        ids.append(iid)
        dsets.append(str(cols["dataset"][i]))
    if not images:
        raise DataError(f"{p}: no images")
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise DataError(f"{p}: images have different sizes {sorted(shapes)}; set a training size")
    return SegData(torch.stack(images), torch.stack(masks), ids, dsets)


def _resize_pair(img: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a ``3 x H x W`` image (bilinear, antialias) and ``H x W`` mask (nearest) to ``size``."""
    was_uint8 = img.dtype == torch.uint8
    x = F.interpolate(
        img[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    x = x[0].round().clamp(0, 255).to(torch.uint8) if was_uint8 else x[0].clamp(0, 1)
    m = F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0] > 0.5
    if not bool(m.any()):
        raise DataError(f"mask vanishes when resized to {size}; use a larger training size")
    return x, m


def concat(parts: Sequence[SegData]) -> SegData:
    """Concatenate splits of equal image size (pretraining on several datasets)."""
    if not parts:
        raise DataError("no data to concatenate")
    shapes = {tuple(p.images.shape[1:]) for p in parts}
    if len(shapes) > 1:
        raise DataError(f"datasets have different image sizes {sorted(shapes)}; set a training size")
    if all(p.images.dtype == torch.uint8 for p in parts):
        imgs = [p.images for p in parts]
    else:
        imgs = [p.images.float() / 255.0 if p.images.dtype == torch.uint8 else p.images for p in parts]
    return SegData(
        torch.cat(imgs),
        torch.cat([p.masks for p in parts]),
        [i for p in parts for i in p.image_ids],
        [d for p in parts for d in p.dataset],
    )


def jitter_box(
    box: torch.Tensor, height: int, width: int, frac: float, rng: np.random.Generator
) -> torch.Tensor:
    """Shift each side of ``box`` by ``U(-frac, frac)`` times the box width/height, clamped to the image."""
    if frac <= 0:
        return box
    x0, y0, x1, y1 = box.tolist()
    w, h = x1 - x0 + 1, y1 - y0 + 1
    d = rng.uniform(-frac, frac, size=4) * np.array([w, h, w, h])
    nx0 = min(max(round(x0 + d[0]), 0), width - 1)
    ny0 = min(max(round(y0 + d[1]), 0), height - 1)
    nx1 = min(max(round(x1 + d[2]), nx0), width - 1)
    ny1 = min(max(round(y1 + d[3]), ny0), height - 1)
    return torch.tensor([nx0, ny0, nx1, ny1], dtype=torch.float32)


def augment_pair(
    x: torch.Tensor, mask: torch.Tensor, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly flip/rotate (image and mask together) and jitter the intensity of one sample.

    Args:
        x: ``3 x H x W`` float32 in [0, 1].
        mask: ``H x W`` bool.
        cfg: probabilities and ranges.
        rng: the sample's generator (draws are made in a fixed order whatever the outcome).

    Returns:
        ``(x, mask)`` with the same shapes (``H == W`` is required for 90-degree rotations).
    """
    u = rng.random(4)
    k = int(rng.integers(1, 4))
    contrast = rng.uniform(*cfg.contrast)
    brightness = rng.uniform(*cfg.brightness)
    gamma = rng.uniform(*cfg.gamma)
    if u[0] < cfg.hflip:
        x, mask = x.flip(-1), mask.flip(-1)
    if u[1] < cfg.vflip:
        x, mask = x.flip(-2), mask.flip(-2)
    if u[2] < cfg.rot90 and x.shape[-1] == x.shape[-2]:
        x, mask = torch.rot90(x, k, dims=(-2, -1)), torch.rot90(mask, k, dims=(-2, -1))
    if u[3] < cfg.intensity:
        x = ((x - 0.5) * contrast + 0.5 + brightness).clamp(0, 1) ** gamma
    return x.contiguous(), mask.contiguous()


def make_batch(
    data: SegData,
    index: Sequence[int],
    *,
    augment: AugmentConfig | None,
    epoch: int,
    global_seed: int,
    box_targets: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assemble a batch, augmented (training) or not (validation: tight boxes, no jitter).

    ``box_targets``: replace each mask by its filled tight box (a warm-up task that teaches a model from
    scratch to use the box prompt; the prompt is still the jittered box).

    Returns:
        ``x01`` ``B x 3 x S x S`` float32 in [0, 1], ``masks`` ``B x S x S`` float32 {0, 1},
        ``boxes`` ``B x 4`` float32 inclusive pixel boxes in the ``S x S`` frame.
    """
    xs, ms, bs = [], [], []
    x_all = data.x01(list(index))
    for j, i in enumerate(index):
        x, m = x_all[j], data.masks[i]
        if augment is not None:
            rng = _sample_rng(data, i, epoch, global_seed)
            x, m = augment_pair(x, m, augment, rng)
            box = jitter_box(require_box_tensor(m), m.shape[0], m.shape[1], augment.box_jitter, rng)
        else:
            box = require_box_tensor(m)
        if box_targets:
            x0, y0, x1, y1 = require_box_tensor(m).long().tolist()
            m = torch.zeros_like(m)
            m[y0 : y1 + 1, x0 : x1 + 1] = True
        xs.append(x)
        ms.append(m)
        bs.append(box)
    return torch.stack(xs), torch.stack(ms).float(), torch.stack(bs)


def _sample_rng(data: SegData, i: int, epoch: int, global_seed: int) -> np.random.Generator:
    from medfm_robust.seeding import rng_for

    return rng_for("finetune-augment", data.dataset[i], data.image_ids[i], epoch, global_seed=global_seed)


def epoch_order(data: SegData, epoch: int, global_seed: int) -> np.ndarray:
    """The shuffled sample order of ``epoch``, keyed by the datasets and the epoch (not by call order)."""
    from medfm_robust.seeding import rng_for

    key = ",".join(sorted(set(data.dataset)))
    return rng_for("finetune-order", key, len(data), epoch, global_seed=global_seed).permutation(len(data))
