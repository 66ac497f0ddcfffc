"""Glaucoma fundus photographs with optic-disc / optic-cup masks (SMDG and REFUGE / ORIGA label maps)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from medfm_robust.data.adapters.files import (
    _images_in,
    _need,
    _rel,
    _subdir,
    _threshold,
    file_loader,
    find_mask,
    safe_id,
)
from medfm_robust.data.registry import Item, Loaded, register
from medfm_robust.errors import DataError
from medfm_robust.io import read_image

# Label-map layout (REFUGE / ORIGA style): one grey mask per image with 0 = cup, 128 = disc rim,
# 255 = background; the disc is every value below 192, the cup every value below 64.
LABEL_MAP_LEVEL = {"optic-disc": 192, "optic-cup": 64}


def _label_map_loader(image: Path, mask_dir: Path, part: str) -> Callable[[], Loaded]:
    def load() -> Loaded:
        img = read_image(image)
        found = find_mask(image, mask_dir, "")
        if not found:
            raise DataError(f"{image}: no label map <stem>.* in {mask_dir}")
        lm = read_image(found[0])
        lm = lm.max(axis=2) if lm.ndim == 3 else lm
        if lm.shape != img.shape[:2]:
            raise DataError(
                f"{found[0]}: label map size {lm.shape} differs from image {image} {img.shape[:2]}"
            )
        return img, lm < LABEL_MAP_LEVEL[part]

    return load


def _glaucoma(dataset: str, spec: Mapping[str, Any], root: Path | None, part: str) -> list[Item]:
    """SMDG (``full-fundus/`` + ``optic-disc/`` + ``optic-cup/``) or a label-map layout (``images/`` +
    ``masks/`` or REFUGE's ``Disc_Cup_Masks/``), detected from the folders present."""
    root = _need(root)
    img_dir = _subdir(root, "full-fundus")
    if img_dir is None:
        lm_dir = _subdir(root, "masks", "Disc_Cup_Masks")
        if (root / "images").is_dir() and lm_dir is not None:
            return [
                Item(safe_id(p.stem), _rel(p, root), _label_map_loader(p, lm_dir, part))
                for p in _images_in(root / "images")
            ]
        raise DataError(
            f"{root}: expected SMDG folders full-fundus/ and {part}/, or a label-map layout images/ + masks/"
        )
    mask_dir = _subdir(root, part)
    if mask_dir is None:
        raise DataError(f"{root}: SMDG folder {part}/ not found")
    images: dict[str, Path] = {}
    for p in _images_in(img_dir):
        images.setdefault(p.stem, p)
    items = []
    for mp in _images_in(mask_dir):
        img = images.get(mp.stem)
        if img is None:
            raise DataError(f"{mp}: no fundus image named {mp.stem}.* in {img_dir}")
        items.append(Item(safe_id(mp.stem), _rel(img, root), file_loader(img, [mp], _threshold(spec))))
    if not items:
        raise DataError(f"{mask_dir}: no masks found")
    return items


GLAUCOMA_LAYOUT = (
    "SMDG: full-fundus/<id>.png + {mask}/<id>.png (folders may be doubled, e.g. full-fundus/full-fundus/); "
    "or label maps: images/<id>.* + masks/<id>.* (0 cup, 128 disc rim, 255 background)"
)


@register(
    "glaucoma_disc", modality="fundus", needs_path=True, layout=GLAUCOMA_LAYOUT.format(mask="optic-disc")
)
def glaucoma_disc(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """Glaucoma fundus photographs with their optic-disc mask (SMDG: images without one are not listed)."""
    return _glaucoma(dataset, spec, root, "optic-disc")


@register("glaucoma_cup", modality="fundus", needs_path=True, layout=GLAUCOMA_LAYOUT.format(mask="optic-cup"))
def glaucoma_cup(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """Glaucoma fundus photographs with their optic-cup mask (SMDG: images without one are not listed)."""
    return _glaucoma(dataset, spec, root, "optic-cup")
