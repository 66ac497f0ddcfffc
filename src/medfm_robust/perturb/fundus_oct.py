"""Fundus / OCT perturbations (5): shadow, blink, oct_motion, defocus (disk PSF), oct_speckle.

Used for both the ``fundus`` and ``oct`` modalities. Images are float32 ``H x W x C`` in [0, 1] units of
the dtype range.
"""

from __future__ import annotations

import math

import numpy as np

from medfm_robust.perturb._common import Context, fft_filter, kernel_transfer, max_kernel_radius
from medfm_robust.perturb.registry import ParamSpec, register


def _bands(ctx: Context, rng: np.random.Generator, axis: int, n: int) -> np.ndarray:
    """Distance (pixels) of each row (axis 0) or column (axis 1) to the nearest of ``n`` random band centres,
    divided by each band's relative width; ``H`` or ``W`` float32."""
    size = ctx.h if axis == 0 else ctx.w
    pos = np.arange(size, dtype=np.float32)
    centres = rng.uniform(0.1, 0.9, n) * size
    rel = rng.uniform(0.6, 1.4, n) * size
    return np.min(np.abs(pos[None, :] - centres[:, None]) / rel[:, None], axis=0).astype(np.float32)


@register(
    "shadow",
    family="fundus_oct",
    param=ParamSpec(
        "width",
        0.002,
        0.2,
        "band half-width, fraction of width",
        bound="band half-width <= 20 % of the width: vessel/floater shadows are narrow",
    ),
)
def shadow(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Shadowing (vessels, floaters, media opacities): 1-3 vertical bands attenuated by up to 85 %
    (fainter when very narrow), soft edges."""
    q = _bands(ctx, rng, 1, int(rng.integers(1, 4)))

    def op(p: float) -> np.ndarray:
        a = np.clip((np.float32(p) - q) / np.float32(0.25 * p + 1e-4), 0, 1) * np.float32(
            0.85 * min(1, p / 0.03)
        )
        return ctx.x * (1 - a)[None, :, None]

    return op


@register(
    "blink",
    family="fundus_oct",
    param=ParamSpec(
        "height",
        0.002,
        0.25,
        "band half-height, fraction",
        bound="band half-height <= 25 %: a blink blanks a part of the scan, never all of it",
    ),
)
def blink(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Blink / signal loss: 1-3 horizontal bands where the signal drops to black (partially when very
    thin), short ramps."""
    q = _bands(ctx, rng, 0, int(rng.integers(1, 4)))

    def op(p: float) -> np.ndarray:
        a = np.clip((np.float32(p) - q) / np.float32(0.15 * p + 1e-4), 0, 1) * np.float32(min(1, p / 0.03))
        return ctx.x * (1 - a)[:, None, None]

    return op


class _RowShift:
    """Label-moving op: row blocks shifted horizontally by ``p * W * u_block`` (sub-pixel, constant fill)."""

    def __init__(self, ctx: Context, unit: np.ndarray) -> None:
        self.ctx, self.unit = ctx, unit  # unit: H float32 in [-1, 1]

    def _src(self, p: float) -> np.ndarray:
        xx = np.arange(self.ctx.w, dtype=np.float32)[None, :]
        return xx - np.float32(p * self.ctx.w) * self.unit[:, None]

    def __call__(self, p: float) -> np.ndarray:
        ctx = self.ctx
        src = self._src(p)
        x0 = np.floor(src)
        f = (src - x0)[:, :, None]
        x0 = x0.astype(np.int64)
        rows = np.arange(ctx.h)[:, None]

        def take(xi: np.ndarray) -> np.ndarray:
            valid = ((xi >= 0) & (xi < ctx.w))[:, :, None]
            return np.where(valid, ctx.x[rows, np.clip(xi, 0, ctx.w - 1)], ctx.bg)

        return take(x0) * (1 - f) + take(x0 + 1) * f

    def move_mask(self, p: float, mask: np.ndarray) -> np.ndarray:
        src = np.rint(self._src(p)).astype(np.int64)
        rows = np.arange(mask.shape[0])[:, None]
        valid = (src >= 0) & (src < mask.shape[1])
        return np.where(valid, mask[rows, np.clip(src, 0, mask.shape[1] - 1)], 0).astype(np.uint8)


@register(
    "oct_motion",
    family="fundus_oct",
    param=ParamSpec(
        "shift",
        0.0005,
        0.1,
        "peak lateral shift, fraction of width",
        bound="<= 10 % of the width: a saccade during the scan (uncorrected by tracking)",
    ),
    moves_labels=True,
)
def oct_motion(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Eye motion between B-scan rows: 4-12 row blocks displaced laterally (sub-pixel), constant fill."""
    n = int(rng.integers(4, 13))
    cuts = np.sort(rng.choice(np.arange(1, ctx.h), size=n - 1, replace=False))
    block = np.searchsorted(cuts, np.arange(ctx.h), side="right")
    u = rng.uniform(-1, 1, n).astype(np.float32)
    u /= max(float(np.abs(u).max()), 1e-6)
    return _RowShift(ctx, u[block])


def disk_kernel(radius: float, max_radius: int) -> np.ndarray:
    """Normalised anti-aliased disk (pillbox) point-spread function of ``radius`` pixels, odd square size."""
    r = min(max_radius, math.ceil(radius) + 1)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    k = np.clip(np.float32(radius + 0.5) - np.sqrt(yy * yy + xx * xx), 0, 1)
    if k.sum() == 0:
        k[r, r] = 1
    return k / k.sum()


@register(
    "defocus",
    family="fundus_oct",
    param=ParamSpec(
        "radius",
        0.2,
        15.0,
        "disk PSF radius, pixels",
        bound="blur circle <= 15 px (6 % of a 256-px frame): a grossly defocused camera",
    ),
)
def defocus(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Defocus: convolution with a disk (pillbox) point-spread function, the geometric-optics blur circle."""
    del rng
    rmax = max_kernel_radius(ctx)
    return lambda p: fft_filter(ctx, kernel_transfer(ctx, disk_kernel(p, rmax)))


@register(
    "oct_speckle",
    family="fundus_oct",
    param=ParamSpec(
        "sigma",
        0.005,
        1.0,
        "log-amplitude std",
        bound="log-amplitude std <= 1: fully developed speckle has pi / sqrt(24) = 0.64 (Goodman)",
    ),
)
def oct_speckle(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Coherent speckle: spatially correlated multiplicative log-normal noise, shared across channels.

    A 3 % floor is added before multiplying so that black background shows speckle too.
    """
    from scipy import ndimage  # imported here: only this type needs it

    n = ndimage.gaussian_filter(rng.standard_normal((ctx.h, ctx.w)).astype(np.float32), 0.7)
    n = (n / max(float(n.std()), 1e-6))[:, :, None]
    base = ctx.x + np.float32(0.03)

    def op(p: float) -> np.ndarray:
        s = np.float32(p)
        return base * np.exp(s * n - s * s / 2) - np.float32(0.03)

    return op
