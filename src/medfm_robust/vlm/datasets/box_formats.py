"""Box conventions of publishers' grounding files: conversion to the project convention (inclusive pixel
``[x0, y0, x1, y1]``) and detection of a file's convention from all its boxes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medfm_robust.errors import ConfigError, DataError

BOX_FORMATS = ("auto", "xyxy_pixel", "xyxy_norm1", "xyxy_norm1000", "xywh_pixel")


def normalise_box(box: Sequence[float], fmt: str, width: int, height: int, *, where: str) -> list[int]:
    """Convert a box in ``fmt`` to the project convention: inclusive pixel ``[x0, y0, x1, y1]``.

    ``xyxy_pixel``: pixel corner indices, inclusive; ``xyxy_norm1``: edges as fractions of width/height;
    ``xyxy_norm1000``: edges on a 0-1000 scale; ``xywh_pixel``: top-left pixel plus width/height in pixels.
    Normalised edges map to pixels by ``x0 = floor(x0n * W)``, ``x1 = ceil(x1n * W) - 1``. The result is
    clamped to the image; a degenerate or reversed box raises ``DataError`` naming ``where``.
    """
    vals = [float(v) for v in box]
    if len(vals) != 4 or not all(np.isfinite(vals)):
        raise DataError(f"{where}: box must be 4 finite numbers, got {list(box)}")
    x0, y0, a, b = vals
    if fmt == "xyxy_pixel":
        x1, y1 = a, b
    elif fmt == "xywh_pixel":
        x1, y1 = x0 + a - 1, y0 + b - 1
    elif fmt in ("xyxy_norm1", "xyxy_norm1000"):
        s = 1.0 if fmt == "xyxy_norm1" else 1000.0
        x0, x1 = np.floor(x0 / s * width), np.ceil(a / s * width) - 1
        y0, y1 = np.floor(y0 / s * height), np.ceil(b / s * height) - 1
    else:
        raise ConfigError(f"box_format '{fmt}' is not one of {BOX_FORMATS}")
    if x1 < x0 or y1 < y0:
        raise DataError(f"{where}: box {list(box)} ({fmt}) has max < min")
    out = [round(x0), round(y0), round(x1), round(y1)]
    out = [min(max(out[0], 0), width - 1), min(max(out[1], 0), height - 1),
           min(max(out[2], 0), width - 1), min(max(out[3], 0), height - 1)]
    return out


def detect_box_format(boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]]) -> str:
    """Guess a dataset's box convention from all its boxes (``sizes`` are ``(height, width)``).

    All coordinates within [0, 1] -> ``xyxy_norm1``; any coordinate beyond its image's width/height
    but all <= 1000 -> ``xyxy_norm1000``; otherwise ``xyxy_pixel``.
    """
    arr = np.asarray(boxes, dtype=float)
    if arr.size and arr.min() >= 0 and arr.max() <= 1.0:
        return "xyxy_norm1"
    beyond = any(max(b[0], b[2]) > w or max(b[1], b[3]) > h for b, (h, w) in zip(boxes, sizes, strict=True))
    if beyond and arr.max() <= 1000:
        return "xyxy_norm1000"
    return "xyxy_pixel"
