"""The generic folder adapter: images and masks in two folders, matched by name and suffix, optional
patient groups from a CSV."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from medfm_robust.data.adapters.files import (
    SOURCE_EXTENSIONS,
    _images_in,
    _need,
    _rel,
    _stem,
    _threshold,
    file_loader,
    find_mask,
    safe_id,
    warn_orphan_masks,
)
from medfm_robust.data.registry import Item, Loaded, register
from medfm_robust.errors import ConfigError, DataError


def _folder_loader(image: Path, mask_dir: Path, suffix: str, threshold: int) -> Callable[[], Loaded]:
    return lambda: file_loader(image, find_mask(image, mask_dir, suffix), threshold)()


def group_reader(
    dataset: str, spec: Mapping[str, Any], root: Path
) -> Callable[[Path], Callable[[], str]] | None:
    """The ``folder`` adapter's ``group_by``: None (every image its own group), a regex with one capture
    group matched (``re.search``) on the image file name, or ``{csv, image_column, group_column}``: a CSV
    file (relative to the dataset folder) whose ``image_column`` holds the image's file name or stem.
    Returns a factory of per-image readers; an image the rule cannot place raises ``DataError`` naming it."""
    rule = spec.get("group_by")
    key = f"datasets.{dataset}.group_by"
    if rule is None:
        return None
    if isinstance(rule, str):
        try:
            pattern = re.compile(rule)
        except re.error as exc:
            raise ConfigError(f"config key '{key}': invalid regular expression ({exc})") from exc
        if pattern.groups != 1:
            raise ConfigError(
                f"config key '{key}': the pattern needs exactly one capture group, has {pattern.groups}"
            )

        def by_name(path: Path) -> Callable[[], str]:
            def read() -> str:
                m = pattern.search(path.name)
                if m is None or not m.group(1):
                    raise DataError(f"{path}: file name does not match config key '{key}' ({rule})")
                return m.group(1)

            return read

        return by_name
    if not isinstance(rule, Mapping) or set(rule) != {"csv", "image_column", "group_column"}:
        raise ConfigError(f"config key '{key}': expected a regex or {{csv, image_column, group_column}}")
    csv_path = root / str(rule["csv"])
    table = _read_group_csv(csv_path, str(rule["image_column"]), str(rule["group_column"]), key)

    def by_csv(path: Path) -> Callable[[], str]:
        def read() -> str:
            group = table.get(path.name, table.get(_stem(path)))
            if not group:
                raise DataError(f"{path}: no group in {csv_path} (config key '{key}')")
            return group

        return read

    return by_csv


def _read_group_csv(path: Path, image_column: str, group_column: str, key: str) -> dict[str, str]:
    """``image file name or stem -> group`` from a CSV file (two entries for one image are an error)."""
    import csv

    if not path.is_file():
        raise DataError(f"{path}: group CSV not found (config key '{key}.csv')")
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        for col in (image_column, group_column):
            if col not in (reader.fieldnames or []):
                raise DataError(f"{path}: column '{col}' not found (config key '{key}')")
        for row in reader:
            name, group = str(row[image_column]).strip(), str(row[group_column]).strip()
            if name in out and out[name] != group:
                raise DataError(f"{path}: image '{name}' listed with groups '{out[name]}' and '{group}'")
            out[name] = group
    return out


@register(
    "folder",
    modality=None,
    needs_path=True,
    layout="<images_dir>/<stem>.<ext> + <masks_dir>/<stem><mask_suffix> (modality from the config; "
    "ext: png, jpg, tif, bmp, dcm, nii, nii.gz)",
)
def folder(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """A user's own dataset: ``images_dir`` images, ``masks_dir`` masks named ``<stem><mask_suffix>``,
    optionally grouped by patient (``group_by``, :func:`group_reader`)."""
    root = _need(root)
    img_dir = root / str(spec["images_dir"])
    mask_dir = root / str(spec["masks_dir"])
    for key, d in (("images_dir", img_dir), ("masks_dir", mask_dir)):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found (config key 'datasets.{dataset}.{key}')")
    suffix = str(spec["mask_suffix"])
    same = img_dir.resolve() == mask_dir.resolve()
    if same and not suffix:
        raise DataError(f"{img_dir}: images and masks share a folder; set 'datasets.{dataset}.mask_suffix'")
    groups = group_reader(dataset, spec, root)
    items = []
    stems = set()

    def is_mask(p: Path) -> bool:
        return p.name.endswith(suffix) if Path(suffix).suffix else _stem(p).endswith(suffix)

    def stem_of(mask: Path) -> str:
        if not is_mask(mask):
            return _stem(mask)
        return (mask.name if Path(suffix).suffix else _stem(mask))[: -len(suffix) or None]

    for img in _images_in(img_dir, SOURCE_EXTENSIONS):
        if same and is_mask(img):
            continue
        stems.add(_stem(img))
        loader = _folder_loader(img, mask_dir, suffix, _threshold(spec))
        items.append(Item(safe_id(_stem(img)), _rel(img, root), loader, groups(img) if groups else None))
    if not items:
        raise DataError(f"{img_dir}: no images found")
    masks = (m for m in _images_in(mask_dir, SOURCE_EXTENSIONS) if not same or is_mask(m))
    warn_orphan_masks(masks, stems, stem_of)
    return items
