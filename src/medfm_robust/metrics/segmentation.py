"""Per-image segmentation metrics on binary masks: IoU, Dice, normalised surface Dice and HD95.

All functions take two ``H x W`` arrays of the same shape (any dtype; foreground is ``> 0`` / ``True``).
Distances are in pixels (unit spacing). Empty-mask conventions (one convention for the whole project):

=================  =====  =====  =====  ======
case               IoU    Dice   NSD    HD95
=================  =====  =====  =====  ======
both empty         1.0    1.0    1.0    0.0
one empty          0.0    0.0    0.0    NaN
=================  =====  =====  =====  ======

HD95 is undefined when exactly one mask is empty (no surface to measure from), so it is NaN there; averaging
code must use NaN-aware means and report how many values were missing.

Surfaces are the mask's border pixels: foreground pixels with at least one background 8-neighbour, pixels
outside the image counting as background (so an object touching the image edge has a border there).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medfm_robust.errors import DataError

#: Columns of the per-image segmentation metric files (docs/ARCHITECTURE.md), in order. ``reachable`` is
#: False for a perturbed output whose band no parameter in the type's bounded range reaches (shard ``reason``
#: starting with ``unreachable``); True for clean and adversarial rows. ``train_seed`` is the training seed of
#: the fine-tuned checkpoint (``finetune.seeds``; 0 for ``zero_shot``).
METRIC_COLUMNS = (
    "model",
    "strategy",
    "train_seed",
    "dataset",
    "modality",
    "image_id",
    "perturbation",
    "category",
    "level",
    "ssim",
    "in_band",
    "reachable",
    "iou",
    "dice",
    "nsd",
    "hd95",
    "checkpoint_hash",
)

NSD_TOLERANCE_PX = 2.0


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks cropped to the bounding box of their union plus one pixel (metrics are unchanged:
    pixels beyond the crop are background, as pixels beyond the image edge are)."""
    p = np.asarray(pred) > 0
    g = np.asarray(gt) > 0
    if p.shape != g.shape or p.ndim != 2:
        raise DataError(f"prediction {p.shape} and ground truth {g.shape} must be H x W arrays of one shape")
    union = p | g
    rows = np.flatnonzero(union.any(axis=1))
    if rows.size == 0:
        return p[:0, :0], g[:0, :0]
    cols = np.flatnonzero(union.any(axis=0))
    crop = (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
    return p[crop], g[crop]


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """|P & G| / |P | G|; 1.0 when both are empty."""
    p, g = _pair(pred, gt)
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else np.count_nonzero(p & g) / union


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2 |P & G| / (|P| + |G|); 1.0 when both are empty."""
    p, g = _pair(pred, gt)
    total = np.count_nonzero(p) + np.count_nonzero(g)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(p & g) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean ``H x W`` map of the border pixels of a mask (8-connectivity, image edge = background)."""
    m = np.asarray(mask, dtype=bool)
    if m.size == 0:
        return m.copy()
    padded = np.pad(m, 1)
    h, w = m.shape
    interior = m.copy()  # 3 x 3 erosion as the AND of the 8 shifted copies (same as binary_erosion)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy != 1 or dx != 1:
                interior &= padded[dy : dy + h, dx : dx + w]
    return m & ~interior


def surface_distances(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances (px) from each border pixel of P to G's border, and from each border pixel of G to P's.

    Both masks must be non-empty. The distance transforms run on the bounding box of both masks (every
    border pixel, hence every nearest neighbour, lies inside it), which gives the same values as on the
    full image at a fraction of the cost for small objects.
    """
    p, g = _pair(pred, gt)
    sp, sg = surface(p), surface(g)
    if not sp.any() or not sg.any():
        raise DataError("surface distances need two non-empty masks")
    return ndimage.distance_transform_edt(~sg)[sp], ndimage.distance_transform_edt(~sp)[sg]


def normalized_surface_dice(pred: np.ndarray, gt: np.ndarray, tolerance: float = NSD_TOLERANCE_PX) -> float:
    """Share of both borders lying within ``tolerance`` px of the other border (Nikolov et al. 2021).

    ``(#{b in dP: d(b, dG) <= tol} + #{b in dG: d(b, dP) <= tol}) / (|dP| + |dG|)``; 1.0 when both masks
    are empty, 0.0 when one is.
    """
    p, g = _pair(pred, gt)
    ep, eg = not p.any(), not g.any()
    if ep and eg:
        return 1.0
    if ep or eg:
        return 0.0
    d_pg, d_gp = surface_distances(p, g)
    hits = np.count_nonzero(d_pg <= tolerance) + np.count_nonzero(d_gp <= tolerance)
    return hits / (d_pg.size + d_gp.size)


def hd95(pred: np.ndarray, gt: np.ndarray) -> float:
    """95th-percentile Hausdorff distance (px): the larger of the two directed 95th percentiles of border
    distances (as ``medpy.metric.hd95``); 0.0 when both masks are empty, NaN when exactly one is."""
    p, g = _pair(pred, gt)
    ep, eg = not p.any(), not g.any()
    if ep and eg:
        return 0.0
    if ep or eg:
        return float("nan")
    d_pg, d_gp = surface_distances(p, g)
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


def segmentation_scores(pred: np.ndarray, gt: np.ndarray,
                        tolerance: float = NSD_TOLERANCE_PX) -> dict[str, float]:
    """All four metrics of one image: ``{"iou", "dice", "nsd", "hd95"}`` (floats; same values and
    conventions as the single-metric functions, with the surface distances computed once)."""
    p, g = _pair(pred, gt)
    n_p, n_g = np.count_nonzero(p), np.count_nonzero(g)
    inter = np.count_nonzero(p & g)
    if n_p == 0 and n_g == 0:
        return {"iou": 1.0, "dice": 1.0, "nsd": 1.0, "hd95": 0.0}
    scores = {"iou": inter / (n_p + n_g - inter), "dice": 2.0 * inter / (n_p + n_g)}
    if n_p == 0 or n_g == 0:
        return {**scores, "nsd": 0.0, "hd95": float("nan")}
    d_pg, d_gp = surface_distances(p, g)
    hits = np.count_nonzero(d_pg <= tolerance) + np.count_nonzero(d_gp <= tolerance)
    scores["nsd"] = hits / (d_pg.size + d_gp.size)
    scores["hd95"] = float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))
    return {k: float(v) for k, v in scores.items()}
