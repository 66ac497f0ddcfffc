"""Endoscopy perturbations (4): specular_reflection, bubbles, blood, overexposure.

Spot-like effects draw their layout once; the parameter scales every spot's size, so coverage and the
SSIM drop grow smoothly with it. Images are float32 ``H x W x C`` in [0, 1] units of the dtype range.
"""

from __future__ import annotations

import numpy as np

from medfm_robust.perturb._common import Context, blob_layout, colour, nearest_blob_field
from medfm_robust.perturb.registry import ParamSpec, register


@register(
    "specular_reflection",
    family="endoscopy",
    param=ParamSpec(
        "size",
        0.002,
        0.06,
        "spot radius, fraction of the image side",
        bound="highlights cover ~10 % of the frame (median of 10 layouts, max 14 %; measured): small spots",
    ),
)
def specular_reflection(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Specular highlights on wet mucosa: 6-20 sharp-edged saturated white elliptical spots."""
    n = int(rng.integers(6, 21))
    centres, radii = blob_layout(ctx, rng, n)
    q, _, _ = nearest_blob_field(ctx, centres, radii, rng.uniform(0.35, 1.0, n), rng.uniform(0, np.pi, n))

    def op(p: float) -> np.ndarray:
        a = np.clip((1.0 - q / np.float32(p)) * 4.0, 0.0, 1.0)[:, :, None]
        return ctx.x * (1 - a) + a

    return op


@register(
    "bubbles",
    family="endoscopy",
    param=ParamSpec(
        "size",
        0.002,
        0.06,
        "bubble radius, fraction of the image side",
        bound="froth over ~1/3 of the frame (median of 10 layouts, max 42 %; measured), no lens-wide bubble",
    ),
)
def bubbles(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Air/fluid bubbles: translucent discs with a bright rim and a specular highlight, 20-45 of them."""
    n = int(rng.integers(20, 46))
    centres, radii = blob_layout(ctx, rng, n)
    q, oy, ox = nearest_blob_field(ctx, centres, radii)

    def op(p: float) -> np.ndarray:
        k = np.float32(p)
        r = q / k
        inside = np.clip((1.0 - r) * 8.0, 0.0, 1.0)
        rim = np.clip(1.0 - np.abs(r - 0.9) * 10.0, 0.0, 1.0)
        hl = np.clip(1.0 - np.hypot(oy / k + 0.45, ox / k + 0.35) / 0.18, 0.0, 1.0)
        y = ctx.x * (1 - 0.7 * inside)[:, :, None] + (0.7 * 0.9 * inside)[:, :, None]
        y = y + (0.6 * rim)[:, :, None]
        return y * (1 - hl)[:, :, None] + hl[:, :, None]

    return op


@register(
    "blood",
    family="endoscopy",
    param=ParamSpec(
        "size",
        0.003,
        0.35,
        "patch radius, fraction of the image side",
        bound="blood covers ~70 % of the frame (median of 10 layouts, max 90 %; measured): mucosa still seen",
    ),
)
def blood(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Blood on the lens/mucosa: 4-10 dark-red elliptical patches that absorb green and blue."""
    n = int(rng.integers(4, 11))
    centres, radii = blob_layout(ctx, rng, n)
    q, _, _ = nearest_blob_field(ctx, centres, radii, rng.uniform(0.4, 1.0, n), rng.uniform(0, np.pi, n))
    tint = np.array([0.75, 0.12, 0.12], np.float32) if ctx.c == 3 else np.array([0.35], np.float32)
    dark = colour(ctx, (0.30, 0.02, 0.03))

    def op(p: float) -> np.ndarray:
        a = np.clip((1.0 - q / np.float32(p)) * 3.0, 0.0, 1.0)[:, :, None] * np.float32(0.9)
        return ctx.x * (1 - a) + a * (0.5 * ctx.x * tint + 0.5 * dark)

    return op


@register(
    "overexposure",
    family="endoscopy",
    param=ParamSpec(
        "gain",
        0.01,
        4.0,
        "extra gain at the hot spot",
        bound="<= 5x light at the hot spot (about 2.3 stops): auto-exposure lag when the tip nears the wall",
    ),
)
def overexposure(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Light source too close: gain rising towards a broad hot spot, saturating (blown-out) regions."""
    yy, xx = ctx.grid()
    cy, cx = rng.uniform(0.3, 0.7, 2) * (ctx.h, ctx.w)
    sig = rng.uniform(0.3, 0.5) * min(ctx.h, ctx.w)
    prof = 0.25 + 0.75 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / np.float32(2 * sig * sig))

    def op(p: float) -> np.ndarray:
        return ctx.x * (1 + np.float32(p) * prof)[:, :, None] + np.float32(0.01 * p) * prof[:, :, None]

    return op
