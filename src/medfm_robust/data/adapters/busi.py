"""BUSI (breast ultrasound): class folders with ``<name> (n).png`` images and ``_mask`` files."""

from __future__ import annotations

import re
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
)
from medfm_robust.data.registry import Item, register
from medfm_robust.errors import DataError

BUSI_CLASSES = ("benign", "malignant", "normal")
_BUSI_NAME = re.compile(r"(?P<stem>.+\(\d+\))(?P<mask>_mask(?:_\d+)?)?")


@register(
    "busi",
    modality="ultrasound",
    needs_path=True,
    layout="[Dataset_BUSI_with_GT/]{benign,malignant,normal}/<class> (N).png + <class> (N)_mask[_k].png",
)
def busi(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """BUSI breast ultrasound: every ``_mask*.png`` of an image merged by union; ids like ``benign_12``."""
    root = _need(root)
    base = root / "Dataset_BUSI_with_GT" if (root / "Dataset_BUSI_with_GT").is_dir() else root
    classes = [c for c in BUSI_CLASSES if (base / c).is_dir()]
    if not classes:
        raise DataError(f"{base}: none of the BUSI folders {', '.join(BUSI_CLASSES)} found")
    items = []
    for cls in classes:
        images: dict[str, Path] = {}
        masks: dict[str, list[Path]] = {}
        for p in _images_in(base / cls, (".png",)):
            m = _BUSI_NAME.fullmatch(p.stem)
            if m is None:
                raise DataError(f"{p}: file name does not follow BUSI's '<class> (N)[_mask[_k]].png'")
            if m["mask"]:
                masks.setdefault(m["stem"], []).append(p)
            else:
                images[m["stem"]] = p
        for stem in sorted(set(masks) - set(images)):
            raise DataError(f"{masks[stem][0]}: mask without its image {stem}.png")
        for stem, img in sorted(images.items()):
            loader = file_loader(img, sorted(masks.get(stem, [])), _threshold(spec))
            items.append(Item(safe_id(stem), _rel(img, root), loader))
    return items
