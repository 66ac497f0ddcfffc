"""Pathology perturbations (2): stain_variation (H&E space), slide_bubbles.

Spot-like effects draw their layout once; the parameter scales every spot's size, so coverage and the
SSIM drop grow smoothly with it. Images are float32 ``H x W x C`` in [0, 1] units of the dtype range.
"""

from __future__ import annotations

import numpy as np

from medfm_robust.perturb._common import LUMA, Context, blob_layout, colour, nearest_blob_field
from medfm_robust.perturb.registry import ParamSpec, register


def _hed2rgb(hed: np.ndarray) -> np.ndarray:
    """skimage's ``hed2rgb`` (``combine_stains`` with ``rgb_from_hed``) in float32: ``H x W x 3`` -> RGB."""
    from skimage.color.colorconv import rgb_from_hed

    neg_log = (np.log(1e-6) * rgb_from_hed).astype(np.float32)  # -(-log 1e-6) * M
    return np.clip(np.exp(hed @ neg_log), 0.0, 1.0)


@register(
    "stain_variation",
    family="pathology",
    param=ParamSpec(
        "strength",
        0.005,
        1.0,
        "log-scale change of the H, E, DAB concentrations",
        bound="stain concentrations change <= e-fold: the inter-laboratory spread of H&E staining",
    ),
)
def stain_variation(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """H&E stain variation in haematoxylin-eosin-DAB space (skimage rgb2hed/hed2rgb): random scale and bias.

    Grayscale input is treated as grey RGB and converted back to luminance (the change shows as intensity).
    """
    from skimage.color import rgb2hed  # imported here: skimage is slow to import

    rgb = ctx.x if ctx.c == 3 else np.repeat(ctx.x, 3, axis=2)
    if "hed" not in ctx.cache:
        hed0 = rgb2hed(rgb).astype(np.float32)
        ctx.cache["hed"] = (hed0, _hed2rgb(hed0))
    hed, recon = ctx.cache["hed"]
    direction = rng.uniform(-1, 1, 3).astype(np.float32)
    direction /= max(float(np.abs(direction).max()), 1e-6)
    bias = rng.uniform(-1, 1, 3).astype(np.float32) * np.float32(0.03)

    def op(p: float) -> np.ndarray:
        # applied as a change relative to the round trip, so p -> 0 is exactly the identity
        out = rgb + (_hed2rgb(hed * np.exp(np.float32(p) * direction) + np.float32(p) * bias) - recon)
        return out if ctx.c == 3 else (out @ LUMA)[:, :, None]

    return op


@register(
    "slide_bubbles",
    family="pathology",
    param=ParamSpec(
        "size",
        0.005,
        0.2,
        "bubble radius, fraction of the image side",
        bound="bubbles cover ~37 % of the field (median of 10 layouts, max 53 %; measured), not all of it",
    ),
)
def slide_bubbles(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Air bubbles under the coverslip: 2-5 bright washed-out discs with dark refractive rims."""
    n = int(rng.integers(2, 6))
    centres, radii = blob_layout(ctx, rng, n)
    q, _, _ = nearest_blob_field(ctx, centres, radii)
    paper = colour(ctx, (0.94, 0.93, 0.95))

    def op(p: float) -> np.ndarray:
        r = q / np.float32(p)
        inside = np.clip((0.95 - r) * 10.0, 0.0, 1.0)[:, :, None]
        rim = np.clip(1.0 - np.abs(r - 0.97) * 12.0, 0.0, 1.0)[:, :, None]
        y = ctx.x * (1 - 0.8 * inside) + 0.8 * inside * paper
        return y * (1 - 0.75 * rim)

    return op
