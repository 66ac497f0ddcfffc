"""ISIC 2016 Task 1 (dermoscopy lesion segmentation), the ISBI challenge layout."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medfm_robust.data.adapters.files import (
    JPEG_EXTENSIONS,
    _images_in,
    _need,
    _rel,
    _subdir,
    _threshold,
    file_loader,
)
from medfm_robust.data.registry import Item, register
from medfm_robust.errors import DataError

ISIC_PARTS = ("Training", "Test")


@register(
    "isic2016",
    modality="dermoscopy",
    needs_path=True,
    layout="ISBI2016_ISIC_Part1_{Training,Test}_Data/ISIC_nnnnnnn.jpg + "
    "ISBI2016_ISIC_Part1_{Training,Test}_GroundTruth/ISIC_nnnnnnn_Segmentation.png",
)
def isic2016(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """ISIC 2016 Task 1 (lesion segmentation): the parts named by ``spec['parts']`` (default both, pooled;
    the paper used ``[Training]``, 900 images)."""
    root = _need(root)
    parts = spec.get("parts") or ISIC_PARTS
    bad = sorted(set(parts) - set(ISIC_PARTS))
    if bad:
        raise DataError(f"dataset {dataset}: unknown ISIC 2016 part(s) {bad} (known: {ISIC_PARTS})")
    items: list[Item] = []
    for part in [p for p in ISIC_PARTS if p in parts]:
        img_dir = _subdir(root, f"ISBI2016_ISIC_Part1_{part}_Data")
        if img_dir is None:
            continue
        gt_dir = _subdir(root, f"ISBI2016_ISIC_Part1_{part}_GroundTruth")
        if gt_dir is None:
            raise DataError(
                f"{root / f'ISBI2016_ISIC_Part1_{part}_GroundTruth'}: ground-truth folder missing "
                f"(images are in {img_dir})"
            )
        for img in _images_in(img_dir, JPEG_EXTENSIONS):
            if not re.fullmatch(r"ISIC_\d+", img.stem):
                continue
            mask = gt_dir / f"{img.stem}_Segmentation.png"
            items.append(Item(img.stem, _rel(img, root), file_loader(img, [mask], _threshold(spec))))
    if not items:
        raise DataError(f"{root}: no ISBI2016_ISIC_Part1_{{Training,Test}}_Data/ISIC_*.jpg images found")
    return items
