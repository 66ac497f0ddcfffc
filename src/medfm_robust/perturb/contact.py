"""Contact sheets: one PNG per modality, rows = perturbation types, columns = original + L1..L5."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from medfm_robust.errors import DataError
from medfm_robust.io import decode_png, write_image


def _display(image: np.ndarray, tile: int, scale: float) -> Image.Image:
    """uint8/uint16, gray/RGB -> an RGB ``tile x tile`` Pillow image; 16-bit values are multiplied by
    ``scale`` (one display window per sheet, taken from the original) and shown at 8 bits."""
    arr = image
    if arr.dtype == np.uint16:
        arr = np.clip(arr.astype(np.float64) * scale, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return Image.fromarray(arr).resize((tile, tile), Image.Resampling.BILINEAR)


def contact_sheet(
    original: np.ndarray,
    rows: Sequence[tuple[str, Sequence[tuple[int, np.ndarray, float, bool]]]],
    *,
    tile: int = 96,
    title: str = "",
) -> np.ndarray:
    """Compose the sheet as an ``H x W x 3`` uint8 array.

    ``rows``: per perturbation type, ``(name, [(level, image, ssim, in_band), ...])``. The SSIM is printed
    under each tile (``*`` marks an output outside its band). 16-bit images are displayed with the
    original's 99.5th percentile as white, the same window for every tile.
    """
    scale = 255.0 / max(float(np.percentile(original, 99.5)), 1.0) if original.dtype == np.uint16 else 1.0
    font = ImageFont.load_default(size=max(10, tile // 8))
    label_w, cap_h, head_h = max(120, tile + 30), max(14, tile // 6), 24 if title else 4
    n_cols = 6
    sheet = Image.new(
        "RGB", (label_w + n_cols * (tile + 4), head_h + len(rows) * (tile + cap_h + 4)), "white"
    )
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 4), title, fill="black", font=font)
    for r, (name, outputs) in enumerate(rows):
        y = head_h + r * (tile + cap_h + 4)
        draw.text((4, y + tile // 2 - 6), name, fill="black", font=font)
        cells: list[tuple[np.ndarray, str]] = [(original, "original")]
        by_level = {lv: (img, s, ok) for lv, img, s, ok in outputs}
        for lv in range(1, 6):
            if lv in by_level:
                img, s, ok = by_level[lv]
                cells.append((img, f"L{lv} {s:.3f}{'' if ok else '*'}"))
        for c, (img, cap) in enumerate(cells):
            x = label_w + c * (tile + 4)
            sheet.paste(_display(img, tile, scale), (x, y))
            draw.text((x + 2, y + tile + 1), cap, fill="black" if "*" not in cap else "red", font=font)
    return np.asarray(sheet)


def write_contact_sheet(
    test_shard: str | Path,
    perturbed: Sequence[str | Path],
    out_path: str | Path,
    *,
    tile: int = 96,
    title: str = "",
) -> None:
    """Build the sheet of a dataset's first image (by id) from its test and perturbed shards; write it."""
    test = pd.read_parquet(test_shard, columns=["image_id", "image_png"])
    if test.empty:
        raise DataError(f"{test_shard}: no images for the contact sheet")
    image_id = sorted(test["image_id"])[0]
    frames = [pd.read_parquet(p) for p in perturbed]
    present = [f for f in frames if len(f)]
    if present:
        ids = set.intersection(*(set(f["image_id"]) for f in present))
        if ids:
            image_id = sorted(ids)[0]
    original = decode_png(bytes(test.loc[test["image_id"] == image_id, "image_png"].iloc[0]))
    rows = []
    for f in frames:
        sub = f[f["image_id"] == image_id].sort_values("level")
        if sub.empty:
            continue
        outs = [
            (int(r.level), decode_png(bytes(r.image_png)), float(r.ssim), bool(r.in_band))
            for r in sub.itertuples()
        ]
        rows.append((str(sub["perturbation"].iloc[0]), outs))
    write_image(out_path, contact_sheet(original, rows, tile=tile, title=title or f"image {image_id}"))
