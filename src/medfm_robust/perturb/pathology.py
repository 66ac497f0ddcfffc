"""Pathology perturbations (2): stain_variation (H&E space by default, HSV as an option), slide_bubbles.

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
    options={"space": ("hed", "hsv")},
)
def stain_variation(ctx: Context, rng: np.random.Generator, space: str = "hed"):  # type: ignore[no-untyped-def]
    """Stain variation: a random change of the staining, in H&E (HED, default) or HSV colour space.

    ``space="hed"`` (default): the haematoxylin, eosin and DAB concentrations (skimage rgb2hed/hed2rgb,
    Ruifrok & Johnston 2001 colour deconvolution) are scaled by exp(p d) (d a random direction, max |d| = 1)
    and shifted by p b (|b| <= 0.03): this is how staining actually varies between labs and batches (more
    or less dye of each stain, Beer-Lambert optical density), and unstained (white) glass stays nearly white.
    ``space="hsv"`` (the paper's description): hue shifted by 40 p d_h degrees, saturation scaled by
    1 + p d_s and value by 1 + 0.6 p d_v (d in [-1, 1]^3, max |d| = 1): a generic colour-cast model that
    also tints white background and is not tied to the stains. Grayscale input is treated as grey RGB and
    converted back to luminance (the change shows as intensity; HSV then changes only the value).
    """
    if space == "hsv":
        return _stain_hsv(ctx, rng)
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


def _stain_hsv(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """The HSV variant of :func:`stain_variation` (hue in turns, so 40 degrees = 40 / 360)."""
    from skimage.color import hsv2rgb, rgb2hsv  # imported here: skimage is slow to import

    rgb = ctx.x if ctx.c == 3 else np.repeat(ctx.x, 3, axis=2)
    if "hsv" not in ctx.cache:
        ctx.cache["hsv"] = rgb2hsv(np.clip(rgb, 0, 1)).astype(np.float32)
    hsv = ctx.cache["hsv"]
    d = rng.uniform(-1, 1, 3).astype(np.float32)
    d /= max(float(np.abs(d).max()), 1e-6)

    def op(p: float) -> np.ndarray:
        q = np.float32(p)
        out = np.empty_like(hsv)
        out[..., 0] = np.mod(hsv[..., 0] + q * d[0] * np.float32(40 / 360), 1)
        out[..., 1] = np.clip(hsv[..., 1] * (1 + q * d[1]), 0, 1)
        out[..., 2] = np.clip(hsv[..., 2] * (1 + np.float32(0.6) * q * d[2]), 0, 1)
        res = hsv2rgb(out).astype(np.float32)
        return res if ctx.c == 3 else (res @ LUMA)[:, :, None]

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
