"""Contact sheets: one PNG per modality, rows = perturbation types, columns = original + L1..L5."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


Output = tuple  # (level, image, ssim, in_band) or (level, image, ssim, in_band, reachable)


def _cross(draw: ImageDraw.ImageDraw, x: int, y: int, tile: int) -> None:
    """Mark an unreachable tile: a grey veil edge and a red diagonal cross."""
    draw.rectangle((x, y, x + tile - 1, y + tile - 1), outline=(150, 150, 150), width=3)
    draw.line((x, y, x + tile - 1, y + tile - 1), fill=(200, 0, 0), width=2)
    draw.line((x, y + tile - 1, x + tile - 1, y), fill=(200, 0, 0), width=2)


def contact_sheet(
    original: np.ndarray,
    rows: Sequence[tuple[str, Sequence[Output]]],
    *,
    tile: int = 96,
    title: str = "",
    levels: Sequence[int] = (1, 2, 3, 4, 5),
) -> np.ndarray:
    """Compose the sheet as an ``H x W x 3`` uint8 array: the original, then the ``levels`` columns.

    ``rows``: per perturbation type, ``(name, [(level, image, ssim, in_band[, reachable]), ...])``. The
    SSIM is printed under each tile: in black when in band, in red with ``*`` when the band was missed
    although the type can reach it, and an *unreachable* tile (no parameter in the type's bounded range
    reaches the band on this image; ``reachable`` False) is crossed out in red and captioned ``n/a``
    after its SSIM (the closest output is shown under the cross). 16-bit images are displayed with the
    original's 99.5th percentile as white, the same window for every tile.
    """
    scale = 255.0 / max(float(np.percentile(original, 99.5)), 1.0) if original.dtype == np.uint16 else 1.0
    font = ImageFont.load_default(size=max(10, tile // 8))
    label_w, cap_h, head_h = max(120, tile + 30), max(14, tile // 6), 24 if title else 4
    n_cols = 1 + len(levels)
    sheet = Image.new(
        "RGB", (label_w + n_cols * (tile + 4), head_h + len(rows) * (tile + cap_h + 4)), "white"
    )
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 4), title, fill="black", font=font)
    for r, (name, outputs) in enumerate(rows):
        y = head_h + r * (tile + cap_h + 4)
        draw.text((4, y + tile // 2 - 6), name, fill="black", font=font)
        x = label_w
        sheet.paste(_display(original, tile, scale), (x, y))
        draw.text((x + 2, y + tile + 1), "original", fill="black", font=font)
        by_level = {int(o[0]): o for o in outputs}
        for c, lv in enumerate(levels, start=1):
            if lv not in by_level:
                continue
            _, img, s, ok, *rest = by_level[lv]
            reach = bool(rest[0]) if rest else True
            x = label_w + c * (tile + 4)
            sheet.paste(_display(img, tile, scale), (x, y))
            if ok:
                cap, colour = f"L{lv} {s:.3f}", "black"
            elif reach:
                cap, colour = f"L{lv} {s:.3f}*", "red"
            else:
                cap, colour = f"L{lv} {s:.2f} n/a", (200, 0, 0)
                _cross(draw, x, y, tile)
            draw.text((x + 2, y + tile + 1), cap, fill=colour, font=font)
    return np.asarray(sheet)


def _reachable(row: Any) -> bool:
    """Whether a shard row's band was reachable (its reason does not say ``unreachable``)."""
    return bool(row.in_band) or not str(getattr(row, "reason", "") or "").startswith("unreachable")


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
            (int(r.level), decode_png(bytes(r.image_png)), float(r.ssim), bool(r.in_band), _reachable(r))
            for r in sub.itertuples()
        ]
        rows.append((str(sub["perturbation"].iloc[0]), outs))
    write_image(out_path, contact_sheet(original, rows, tile=tile, title=title or f"image {image_id}"))


def medical_sheets(
    out_dir: str | Path, *, levels: Sequence[int] = (1, 3, 5), size: int = 192, tile: int = 104, seed: int = 0
) -> list[Path]:
    """One sheet per modality family of its medical types at ``levels`` on the project's synthetic image
    of that modality (``medfm_robust.data.demo``), written as ``<out_dir>/perturb_<modality>.png``.

    ``python -m medfm_robust.perturb.contact docs/images`` regenerates the sheets of ``docs/images``.
    """
    from medfm_robust.data.demo import synthetic_sample
    from medfm_robust.perturb import REGISTRY, calibrate_levels
    from medfm_robust.perturb._common import Context
    from medfm_robust.perturb.registry import FAMILIES
    from medfm_robust.seeding import seed_for

    written = []
    for family, modalities in FAMILIES.items():
        modality = modalities[0]
        image, _ = synthetic_sample("contact", modality, 0, seed=seed, size=size)
        ctx = Context(image)
        rows = []
        for name, spec in REGISTRY.items():
            if spec.family != family:
                continue
            res = calibrate_levels(
                ctx, name, levels, seed=seed_for("contact", modality, name, global_seed=seed)
            )
            rows.append(
                (
                    name,
                    [
                        (
                            r.level,
                            r.image,
                            r.ssim,
                            r.in_band,
                            r.in_band or not r.reason.startswith("unreachable"),
                        )
                        for r in res
                    ],
                )
            )
        lv = ", ".join(f"L{v}" for v in levels)
        title = f"{modality}: medical types, original + {lv} (SSIM; * missed band; crossed = unreachable)"
        path = Path(out_dir) / f"perturb_{modality}.png"
        write_image(path, contact_sheet(image, rows, tile=tile, title=title, levels=levels))
        written.append(path)
    return written


if __name__ == "__main__":
    import sys

    for p in medical_sheets(sys.argv[1] if len(sys.argv) > 1 else "docs/images"):
        print(p)
