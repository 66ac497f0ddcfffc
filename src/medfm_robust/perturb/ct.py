"""CT perturbations (4): metal_streaks, beam_hardening (cupping), photon_starvation, window_level.

Images are float32 ``H x W x C`` in [0, 1] units of the dtype range.
"""

from __future__ import annotations

import numpy as np

from medfm_robust.perturb._common import Context
from medfm_robust.perturb.registry import ParamSpec, register


def _intensity_range(ctx: Context) -> tuple[float, float]:
    """(1st, 99th) percentile of the luminance: the image's own intensity range."""
    if "p1p99" not in ctx.cache:
        lo, hi = np.percentile(ctx.gray, [1, 99])
        ctx.cache["p1p99"] = (float(lo), float(max(hi, lo + 1e-3)))
    return ctx.cache["p1p99"]


@register(
    "metal_streaks",
    family="ct",
    param=ParamSpec(
        "amplitude",
        0.005,
        1.0,
        "fraction of intensity range",
        bound="streaks <= the image intensity range (about +-1000 HU next to hip/dental metal)",
    ),
)
def metal_streaks(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Metal artefact: bright/dark streaks radiating from 1-3 metal objects, decaying with distance."""
    yy, xx = ctx.grid()
    lo, hi = _intensity_range(ctx)
    field = np.zeros((ctx.h, ctx.w), np.float32)
    metal = np.zeros((ctx.h, ctx.w), np.float32)
    s = min(ctx.h, ctx.w)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.3, 0.7, 2) * (ctx.h, ctx.w)
        theta = np.arctan2(yy - cy, xx - cx)
        dist = np.hypot(yy - cy, xx - cx)
        ang = np.zeros_like(field)
        for _ in range(6):
            k = int(rng.integers(6, 40))
            ang += np.cos(k * theta + rng.uniform(0, 2 * np.pi)).astype(np.float32) * np.float32(
                rng.uniform(0.5, 1)
            )
        field += ang / (1 + dist / np.float32(0.15 * s))
        metal = np.maximum(metal, np.clip(np.float32(0.02 * s) - dist, 0, 1))
    field /= max(float(np.abs(field).max()), 1e-6)
    field = (field * np.float32(hi - lo))[:, :, None]
    metal = metal[:, :, None]

    def op(p: float) -> np.ndarray:
        y = ctx.x + np.float32(p) * field
        a = np.minimum(metal * np.float32(min(1.0, 4 * p)), 1)
        return y * (1 - a) + a

    return op


@register(
    "beam_hardening",
    family="ct",
    param=ParamSpec(
        "cupping",
        0.005,
        0.4,
        "relative central depression",
        bound="cupping <= 40 % of the centre value: uncorrected water-phantom cupping is a few to tens of %",
    ),
)
def beam_hardening(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Beam-hardening cupping: attenuation falls towards the centre of the object, so its centre darkens.

    The object is the region above 10 % of the intensity range; the depression is
    c (1 - (r / R)^2), r the distance to the object's centroid and R its radius.
    """
    del rng
    yy, xx = ctx.grid()
    lo, hi = _intensity_range(ctx)
    body = ctx.gray > lo + 0.1 * (hi - lo)
    if body.sum() < 16:
        body = np.ones_like(body)
    cy, cx = float(yy[body].mean()), float(xx[body].mean())
    r = np.hypot(yy - cy, xx - cx)
    big_r = max(float(np.percentile(r[body], 95)), 2.0)
    prof = np.clip(1 - (r / np.float32(big_r)) ** 2, 0, 1)[:, :, None]

    def op(p: float) -> np.ndarray:
        return ctx.x * (1 - np.float32(p) * prof)

    return op


@register(
    "photon_starvation",
    family="ct",
    param=ParamSpec(
        "amplitude",
        0.005,
        1.0,
        "fraction of intensity range",
        bound="streaks <= the image intensity range (starved-view noise streaks, not a new image)",
    ),
)
def photon_starvation(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Photon starvation: noisy streaks along rays through dense regions, scaled to the intensity range.

    24 rays pass through randomly chosen dense pixels (top 5 % of intensity) at random angles; each ray's
    streak weight rises with its line integral of intensity (few photons survive long dense paths) and its
    sign and size are random, as back-projected noise of starved projections. Thin (about 1.5 px) streaks.
    """
    yy, xx = ctx.grid()
    g = ctx.gray
    lo, hi = _intensity_range(ctx)
    dense = np.flatnonzero(g >= np.percentile(g, 95))
    n = 24
    picks = rng.choice(dense, size=n, replace=True)
    angles = rng.uniform(0, np.pi, n)
    noise = rng.standard_normal(n).astype(np.float32)
    ts = np.linspace(-1.5, 1.5, 2 * max(ctx.h, ctx.w))
    field = np.zeros((ctx.h, ctx.w), np.float32)
    weights = []
    for i in range(n):
        py, px = divmod(int(picks[i]), ctx.w)
        dy, dx = np.sin(angles[i]), np.cos(angles[i])
        sy = np.rint(py + ts * dy * ctx.h).astype(int)
        sx = np.rint(px + ts * dx * ctx.w).astype(int)
        ok = (sy >= 0) & (sy < ctx.h) & (sx >= 0) & (sx < ctx.w)
        weights.append(float(g[sy[ok], sx[ok]].sum()))
    wmax = max(max(weights), 1e-6)
    for i in range(n):
        py, px = divmod(int(picks[i]), ctx.w)
        d = np.abs((yy - py) * np.float32(np.cos(angles[i])) - (xx - px) * np.float32(np.sin(angles[i])))
        field += noise[i] * np.float32((weights[i] / wmax) ** 2) * np.exp(-d * d / np.float32(2 * 1.5**2))
    field /= max(float(np.abs(field).max()), 1e-6)
    field = (field * np.float32(hi - lo))[:, :, None]

    return lambda p: ctx.x + np.float32(p) * field


@register(
    "window_level",
    family="ct",
    param=ParamSpec(
        "shift",
        0.005,
        1.0,
        "window error (0 = correct)",
        bound="width narrowed to 10 % about the tissue level, off by <= half of it: a wrong preset, a window",
    ),
)
def window_level(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Wrong display window: narrowed in proportion to s (to 10 % of the range at s = 1) about the body's
    median intensity (pixels above 20 % of the range: air excluded), off-centre by up to half of that
    narrowed width, then clipped (saturation). At s = 1 this is a narrow soft-tissue window set on the
    wrong level: tissue contrast and noise are stretched and part of the tissue saturates, but the
    anatomy inside the window stays visible (a window centred between air and tissue would turn the
    body into a binary silhouette)."""
    lo, hi = _intensity_range(ctx)
    direction = np.float32(rng.uniform(0.3, 1.0) * (1 if rng.random() < 0.5 else -1))
    centre, width = (lo + hi) / 2, hi - lo
    g = ctx.gray
    body = g[g > lo + 0.2 * width]
    tissue = float(np.median(body)) if body.size else centre

    def op(p: float) -> np.ndarray:
        w = width * (1 - np.float32(0.9) * np.float32(p))
        c = centre + np.float32(p) * (tissue - centre) + direction * np.float32(p) * w / 2
        return (ctx.x - (c - w / 2)) / w * np.float32(width) + np.float32(lo)

    return op
