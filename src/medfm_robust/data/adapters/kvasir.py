"""Kvasir-SEG (endoscopy polyps): JPEG images and same-name JPEG masks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medfm_robust.data.adapters.files import (
    _images_in,
    _need,
    _rel,
    _threshold,
    file_loader,
    safe_id,
    warn_orphan_masks,
)
from medfm_robust.data.registry import Item, register
from medfm_robust.errors import DataError


@register(
    "kvasir_seg",
    modality="endoscopy",
    needs_path=True,
    layout="[Kvasir-SEG/]images/<id>.jpg + [Kvasir-SEG/]masks/<id>.jpg (JPEG masks, foreground > 127)",
)
def kvasir_seg(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """Kvasir-SEG polyps: JPEG images and same-name JPEG masks binarised strictly above 127."""
    root = _need(root)
    base = root / "Kvasir-SEG" if (root / "Kvasir-SEG" / "images").is_dir() else root
    img_dir, mask_dir = base / "images", base / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found (expected Kvasir-SEG's images/ and masks/)")
    images = _images_in(img_dir)
    items = [
        Item(safe_id(img.stem), _rel(img, root), file_loader(img, [mask_dir / img.name], _threshold(spec)))
        for img in images
    ]
    if not items:
        raise DataError(f"{img_dir}: no images found")
    warn_orphan_masks(_images_in(mask_dir), {p.stem for p in images}, lambda m: m.stem)
    return items
