"""Boxes: the one box-from-mask rule and the one box text format.

A box is ``[x_min, y_min, x_max, y_max]`` in pixels of the stored image with an **inclusive** max, as MedSAM
derives it from ``np.where`` of the mask (docs/ARCHITECTURE.md, Conventions). Foreground is ``mask > 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from medfm_robust.errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = ["box_from_mask", "box_text", "require_box", "require_box_tensor"]


def box_from_mask(mask: np.ndarray) -> list[int] | None:
    """Tight inclusive box ``[x_min, y_min, x_max, y_max]`` (Python ints) of ``mask > 0``; None if empty.

    ``mask``: ``H x W`` of any numeric or bool dtype; another shape raises ``DataError``.
    """
    m = np.asarray(mask) > 0
    if m.ndim != 2:
        raise DataError(f"mask must be H x W, got shape {m.shape}")
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def require_box(mask: np.ndarray, source: str = "mask") -> np.ndarray:
    """:func:`box_from_mask` as int64 ``(4,)``; an empty mask raises ``DataError`` naming ``source`` (a box
    prompt cannot be derived from it)."""
    box = box_from_mask(mask)
    if box is None:
        raise DataError(f"{source}: empty mask: no box prompt can be derived")
    return np.array(box, dtype=np.int64)


def require_box_tensor(mask: torch.Tensor, source: str = "mask") -> torch.Tensor:
    """:func:`require_box` of an ``H x W`` CPU tensor mask, as a float32 ``(4,)`` tensor (the training
    batches' box dtype)."""
    import torch

    return torch.from_numpy(require_box(mask.numpy(), source).astype(np.float32))


def box_text(values: Sequence[float]) -> str:
    """``[a, b, c, d]``: integral values as integers, others rounded to 4 decimals (the answer and reference
    text of grounding samples and the training target of a box)."""
    parts = [str(int(v)) if float(v).is_integer() else str(round(float(v), 4)) for v in values]
    return "[" + ", ".join(parts) + "]"
