"""Dermoscopy perturbations (3): hair, vignette, light_reflection.

Spot-like effects draw their layout once; the parameter scales every spot's size, so coverage and the
SSIM drop grow smoothly with it. Images are float32 ``H x W x C`` in [0, 1] units of the dtype range.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from medfm_robust.perturb._common import Context, blob_layout, colour, nearest_blob_field
from medfm_robust.perturb.registry import ParamSpec, register


@register(
    "hair",
    family="dermoscopy",
    param=ParamSpec(
        "hairs",
        0.3,
        150.0,
        "number of hairs (fractional)",
        bound="<= 150 strands: densely haired skin over the lesion (ISIC images show tens to ~100)",
    ),
)
def hair(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Dark hairs: curved strands (quadratic Bezier) drawn one by one; a fractional count fades one in."""
    nmax = 300
    s = min(ctx.h, ctx.w)
    starts = rng.uniform(0, 1, (nmax, 2)) * (ctx.w, ctx.h)
    ang = rng.uniform(0, np.pi, nmax)
    length = rng.uniform(0.25, 0.8, nmax) * s
    bend = rng.uniform(-0.25, 0.25, nmax) * length
    width = np.maximum(1, np.rint(rng.uniform(0.6, 1.6, nmax) * s / 160)).astype(int)
    tt = np.linspace(0, 1, 12)[:, None]
    curves = []
    for i in range(nmax):
        d = np.array([np.cos(ang[i]), np.sin(ang[i])])
        p0, p2 = starts[i], starts[i] + d * length[i]
        p1 = (p0 + p2) / 2 + np.array([-d[1], d[0]]) * bend[i]
        pts = (1 - tt) ** 2 * p0 + 2 * (1 - tt) * tt * p1 + tt**2 * p2
        curves.append([tuple(q) for q in pts])
    hair_rgb = colour(ctx, (0.16, 0.10, 0.07))

    def op(p: float) -> np.ndarray:
        canvas = Image.new("L", (ctx.w, ctx.h), 0)
        draw = ImageDraw.Draw(canvas)
        full = int(p)
        frac = p - full
        if frac > 0 and full < nmax:
            draw.line(curves[full], fill=round(230 * frac), width=int(width[full]), joint="curve")
        for i in range(min(full, nmax)):
            draw.line(curves[i], fill=230, width=int(width[i]), joint="curve")
        alpha = (np.asarray(canvas, np.float32) / np.float32(255))[:, :, None]
        return ctx.x * (1 - alpha) + hair_rgb * alpha

    return op


@register(
    "vignette",
    family="dermoscopy",
    param=ParamSpec(
        "strength",
        0.01,
        9.0,
        "1/f^2 of the cos^4 law",
        bound="corners keep >= 1 % of the centre light (round-field contact dermatoscopes: black corners)",
    ),
)
def vignette(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Radial fall-off of illumination (cos^4 law, 1 / (1 + v r^2)^2) about a slightly off-centre axis."""
    yy, xx = ctx.grid()
    cy, cx = (0.5 + rng.uniform(-0.08, 0.08, 2)) * (ctx.h, ctx.w)
    r2 = ((yy - cy) / (ctx.h / 2)) ** 2 / 2 + ((xx - cx) / (ctx.w / 2)) ** 2 / 2

    def op(p: float) -> np.ndarray:
        m = 1.0 / (1.0 + np.float32(p) * r2) ** 2
        return ctx.x * m[:, :, None]

    return op


@register(
    "light_reflection",
    family="dermoscopy",
    param=ParamSpec(
        "size",
        0.003,
        0.1,
        "glare radius, relative to the spot layout",
        bound="glare changes <= 25 % of the image (median of 10 layouts, max 39 %; measured): lesion visible",
    ),
)
def light_reflection(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Glare from the dermatoscope light: 1-3 soft white highlights (screen blend) whose size grows."""
    n = int(rng.integers(1, 4))
    centres, radii = blob_layout(ctx, rng, n, margin=0.2)
    q, _, _ = nearest_blob_field(ctx, centres, radii)
    q2 = q * q

    def op(p: float) -> np.ndarray:
        glare = np.minimum(np.float32(1.6) * np.exp(-q2 / np.float32(2 * p * p)), 1.0)[:, :, None]
        return 1 - (1 - ctx.x) * (1 - glare)

    return op
