"""Per-image context and the numerical helpers shared by the perturbation families."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import scipy.fft as sfft

from medfm_robust.errors import DataError
from medfm_robust.intensity import check_value_range
from medfm_robust.perturb.ssim import SSIMReference, default_data_range


class Context:
    """One source image prepared once and shared by every (type, level) calibrated on it.

    ``image``: ``H x W`` or ``H x W x C`` (C in 1, 3) uint8/uint16, H and W >= 11. The stored values
    ``black`` and ``white`` (``lo``, ``hi``) come from ``value_range`` (the shard's column) if given, else
    from ``data_range`` (``hi - lo``; ``lo`` = 0 when the image fits in [0, data_range], else the image's
    minimum), else 0..255 for uint8 and the image's own min..max for uint16 (raw scanner values).
    Attributes: ``x`` float32 ``H x W x C`` in [0, 1] (``(image - lo) / (hi - lo)``: perturbation
    parameters in intensity units are fractions of this range), ``bg`` float32 ``C``
    (constant fill for content moved in from outside: the per-channel median of the 1-pixel border),
    ``ref`` (:class:`SSIMReference`; skipped with ``with_reference=False``), and ``cache`` for expensive
    per-image quantities (FFTs, HED).
    """

    def __init__(
        self,
        image: np.ndarray,
        *,
        with_reference: bool = True,
        data_range: float | None = None,
        value_range: Sequence[float] | None = None,
    ) -> None:
        image = np.asarray(image)
        self.input_shape = image.shape  # outputs keep it (an H x W x 1 input gives H x W x 1 outputs)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise DataError(f"expected an H x W or H x W x 3 image, got shape {image.shape}")
        if image.dtype not in (np.uint8, np.uint16):
            raise DataError(f"unsupported image dtype {image.dtype} (expected uint8 or uint16)")
        if min(image.shape[:2]) < 11:
            raise DataError(f"image too small for SSIM ({image.shape[:2]}; need at least 11 x 11)")
        self.image = np.ascontiguousarray(image)
        self.dtype = image.dtype
        self.lo, self.maxval = _black_and_range(image, data_range, value_range)
        x = image.reshape(*image.shape[:2], -1).astype(np.float32)
        if self.lo:
            x -= np.float32(self.lo)
        self.x = x / np.float32(self.maxval)
        self.h, self.w, self.c = self.x.shape
        border = np.concatenate([self.x[0], self.x[-1], self.x[:, 0], self.x[:, -1]], axis=0)
        self.bg = np.median(border, axis=0).astype(np.float32)
        self.ref = (  # type: ignore[assignment]
            SSIMReference(self.image, self.maxval) if with_reference else None
        )
        self.cache: dict[Any, Any] = {}

    @property
    def gray(self) -> np.ndarray:
        """Luminance ``H x W`` float32 in [0, 1]."""
        if "gray" not in self.cache:
            w = np.array([0.2125, 0.7154, 0.0721], np.float32)
            self.cache["gray"] = self.x[..., 0] if self.c == 1 else self.x @ w
        return self.cache["gray"]

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates ``(yy, xx)``, each ``H x W`` float32."""
        if "grid" not in self.cache:
            yy, xx = np.mgrid[0 : self.h, 0 : self.w].astype(np.float32)
            self.cache["grid"] = (yy, xx)
        return self.cache["grid"]

    def quantise(self, y: np.ndarray, dither: np.ndarray | None = None) -> np.ndarray:
        """Float image in [0, 1] units -> the saved integer image (original shape and dtype).

        Values are clipped to [0, 1] (black..white) and mapped back to stored values ``lo + v (hi - lo)``.
        Without ``dither`` they are rounded to the nearest integer. With ``dither`` (``H x W x C``
        uniform [0, 1) float32, drawn once per calibration) they are rounded stochastically,
        ``floor(v + u)``: a fractional value rounds up with probability equal to its fraction, while
        values already (within 1/512) on an integer stay exactly as they are. Unchanged pixels are
        therefore kept, and the saved image's SSIM varies smoothly with the parameter instead of in whole
        grey-level steps (which matter on black backgrounds).
        """
        v = np.clip(y, 0.0, 1.0)
        v *= np.float32(self.maxval)
        if self.lo:
            v += np.float32(self.lo)
        if dither is None:
            np.rint(v, out=v)
        else:
            # the dither lies in [1/512, 1 - 1/512] (see calibrate._dither), so a value within 1/512 of an
            # integer floors back to that integer: unchanged pixels stay exactly as they are
            v += dither  # v >= 0: the integer conversion below truncates, i.e. floors
        return v.astype(self.dtype).reshape(self.input_shape)


def _black_and_range(
    image: np.ndarray, data_range: float | None, value_range: Sequence[float] | None
) -> tuple[float, float]:
    """(stored value of black, stored range black..white) of an image; see :class:`Context`."""
    if value_range is not None:
        lo, hi = check_value_range(value_range)
        return lo, hi - lo
    rng = default_data_range(image, data_range)
    if data_range is None:
        lo = 0.0 if image.dtype == np.uint8 else float(image.min())
    else:
        lo = 0.0 if float(image.max()) <= rng else float(image.min())
    return lo, rng


def smooth_field(
    rng: np.random.Generator, h: int, w: int, n_terms: int = 6, max_cycles: float = 1.5
) -> np.ndarray:
    """A smooth random field ``H x W`` float32 scaled to [-1, 1]: a sum of low-frequency plane waves."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = np.zeros((h, w), np.float32)
    for _ in range(n_terms):
        fy, fx = rng.uniform(-max_cycles, max_cycles, 2)
        ph = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.5, 1.0)
        f += np.float32(amp) * np.cos(2 * np.pi * (fy * yy / h + fx * xx / w) + ph).astype(np.float32)
    f -= f.min()
    f /= max(float(f.max()), 1e-6)
    return f * 2 - 1


def nearest_blob_field(
    ctx: Context,
    centres: np.ndarray,
    radii: np.ndarray,
    aspect: np.ndarray | None = None,
    angles: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel, the normalised offset to the nearest blob in the scaled metric.

    ``centres`` ``N x 2`` (y, x) pixels, ``radii`` ``N`` pixels (relative sizes), optional elliptical
    ``aspect`` (minor/major) and ``angles``. Returns ``(q, oy, ox)``, ``H x W`` float32: ``q`` is the
    distance to the nearest blob divided by its radius (so a blob scaled by ``k`` covers ``q < k``) and
    ``(oy, ox)`` the normalised offset (for highlights placed inside the blob).
    """
    yy, xx = ctx.grid()
    best = np.full((ctx.h, ctx.w), np.inf, np.float32)
    oy = np.zeros_like(best)
    ox = np.zeros_like(best)
    for i, ((cy, cx), r) in enumerate(zip(centres, radii, strict=True)):
        dy = (yy - np.float32(cy)) / np.float32(r)
        dx = (xx - np.float32(cx)) / np.float32(r)
        if aspect is not None and angles is not None:
            ca, sa = np.float32(np.cos(angles[i])), np.float32(np.sin(angles[i]))
            u = ca * dx + sa * dy
            v = (-sa * dx + ca * dy) / np.float32(aspect[i])
            d = np.sqrt(u * u + v * v)
        else:
            d = np.sqrt(dy * dy + dx * dx)
        closer = d < best
        best = np.where(closer, d, best)
        oy = np.where(closer, dy, oy)
        ox = np.where(closer, dx, ox)
    return best, oy, ox


def _fast_len(n: int) -> int:
    """Smallest even 2-3-5-smooth length >= ``n`` (fast FFT sizes)."""
    m = n + (n % 2)
    while True:
        k = m
        for f in (2, 3, 5):
            while k % f == 0:
                k //= f
        if k == 1:
            return m
        m += 2


#: Reflect-pad widths of the FFT grids: a kernel of radius r is applied on the smallest grid whose pad is
#: >= r (at 256 px: 288, 320 and 384-point transforms; a 288-point grid costs about half a 384-point one).
_PADS = (16, 32, 64)


def max_kernel_radius(ctx: Context) -> int:
    """The largest kernel radius the padded FFT supports without wrap-around (the widest pad)."""
    # 64 px covers every bounded kernel (Gaussian sigma <= 20: 3.2 sigma; motion <= 60 px; defocus
    # <= 15 px) and gives fast transform sizes (384 = 2^7 x 3 at 256 px: 432 = 2^4 x 3^3 took 2x as long)
    return max(_PADS[0], min(_PADS[-1], max(ctx.h, ctx.w) // 3))


def fft_grid(ctx: Context, radius: float) -> tuple[int, int, int]:
    """(pad, Hp, Wp) of the padded FFT grid for a kernel of ``radius`` pixels: the smallest pad of
    ``_PADS`` that is >= ``radius`` (at most :func:`max_kernel_radius`), padded to fast 2-3-5 lengths."""
    top = max_kernel_radius(ctx)
    pad = next((p for p in _PADS if radius <= p <= top), top)
    return pad, _fast_len(ctx.h + 2 * pad), _fast_len(ctx.w + 2 * pad)


def _padded_fft(ctx: Context, pad: int, hp: int, wp: int) -> np.ndarray:
    """rFFT of the image reflect-padded onto one grid (cached per grid): ``C x Hp x Wp//2+1`` complex64."""
    key = ("fft", pad)
    if key not in ctx.cache:
        xp = np.pad(ctx.x, ((pad, hp - ctx.h - pad), (pad, wp - ctx.w - pad), (0, 0)), mode="reflect")
        ctx.cache[key] = sfft.rfft2(np.moveaxis(xp, -1, 0), workers=1).astype(np.complex64)
    return ctx.cache[key]


def fft_filter(ctx: Context, transfer: np.ndarray) -> np.ndarray:
    """Apply a transfer function (``Hp x Wp//2+1`` on one of the grids of :func:`fft_grid`, from
    :func:`kernel_transfer` or :func:`gaussian_transfer`) to the image; ``H x W x C`` float32 out."""
    for pad in _PADS:
        grid = fft_grid(ctx, pad)
        if transfer.shape == (grid[1], grid[2] // 2 + 1):
            break
    else:
        raise ValueError(f"transfer function of shape {transfer.shape} is on none of the image's FFT grids")
    pad, hp, wp = grid
    out = sfft.irfft2(_padded_fft(ctx, *grid) * transfer, s=(hp, wp), workers=1)
    return np.moveaxis(out[:, pad : pad + ctx.h, pad : pad + ctx.w], 0, -1).astype(np.float32)


def kernel_transfer(ctx: Context, kernel: np.ndarray) -> np.ndarray:
    """Transfer function of a small centred ``k x k`` kernel (k odd, k <= 2 * max_kernel_radius + 1) on
    the smallest grid whose pad covers its radius."""
    k = kernel.shape[0]
    r = k // 2
    _, hp, wp = fft_grid(ctx, r)
    buf = np.zeros((hp, wp), np.float32)
    buf[:k, :k] = kernel
    buf = np.roll(buf, (-r, -r), axis=(0, 1))
    return sfft.rfft2(buf, workers=1).astype(np.complex64)


def gaussian_transfer(ctx: Context, sigma: float) -> np.ndarray:
    """Analytic transfer function of a Gaussian blur with standard deviation ``sigma`` pixels, on the
    smallest grid whose pad covers 4 sigma (the tail beyond it, < 1e-4 of the weight, wraps around)."""
    _, hp, wp = fft_grid(ctx, 4 * sigma)
    a = np.float32(-2 * np.pi**2 * sigma**2)
    fy = np.fft.fftfreq(hp).astype(np.float32)
    fx = np.fft.rfftfreq(wp).astype(np.float32)
    return np.exp(a * fy * fy)[:, None] * np.exp(a * fx * fx)[None, :]  # separable: two 1-D exponentials


def _cv_inverse_matrix(inv: tuple[float, ...]) -> np.ndarray:
    """Pillow's inverse-affine 6-tuple (continuous coordinates, pixel centres at +0.5) as OpenCV's
    ``2 x 3`` inverse map on pixel-centre indices."""
    a, b, c, d, e, f = inv
    return np.array([[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]], np.float64)


def affine_warp(ctx: Context, inv: tuple[float, ...], fill: np.ndarray | float | None = None) -> np.ndarray:
    """Warp ``ctx.x`` by an inverse affine map (output -> input, Pillow's 6-tuple), bilinear, constant fill.

    Returns ``H x W x C`` float32. ``fill`` defaults to the context's background value ``bg``.
    """
    fillv = ctx.bg if fill is None else np.broadcast_to(np.asarray(fill, np.float32), (ctx.c,))
    border = tuple(float(v) for v in fillv) + (0.0,) * (4 - ctx.c)
    out = cv2.warpAffine(
        ctx.x,
        _cv_inverse_matrix(inv),
        (ctx.w, ctx.h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border,
    )
    return out.reshape(ctx.x.shape)


def affine_warp_mask(mask: np.ndarray, inv: tuple[float, ...]) -> np.ndarray:
    """The same inverse affine map on an ``H x W`` uint8 mask (nearest neighbour, 0 outside)."""
    return cv2.warpAffine(
        np.ascontiguousarray(mask.astype(np.uint8)),
        _cv_inverse_matrix(inv),
        (mask.shape[1], mask.shape[0]),
        flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def centre_affine(
    ctx: Context, a: float, b: float, c: float, d: float, tx: float = 0.0, ty: float = 0.0
) -> tuple[float, ...]:
    """Pillow inverse-affine tuple: input = M (output - centre) + centre - (tx, ty), M = [[a, b], [c, d]]."""
    cx, cy = ctx.w / 2.0, ctx.h / 2.0
    return (a, b, cx - a * cx - b * cy - tx, c, d, cy - c * cx - d * cy - ty)


LUMA = np.array([0.2125, 0.7154, 0.0721], np.float32)


def colour(ctx: Context, rgb: tuple[float, float, float]) -> np.ndarray:
    """An RGB colour (``3`` float32, [0, 1]) for colour images, its luminance (``1``) for grayscale ones."""
    c = np.array(rgb, np.float32)
    return c if ctx.c == 3 else np.array([float(c @ LUMA)], np.float32)


def blob_layout(
    ctx: Context, rng: np.random.Generator, n: int, margin: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` centres ``N x 2`` (y, x) in the image minus a margin, and radii in [0.6, 1.4] x min side (px)."""
    cy = rng.uniform(margin, 1 - margin, n) * ctx.h
    cx = rng.uniform(margin, 1 - margin, n) * ctx.w
    r = rng.uniform(0.6, 1.4, n) * min(ctx.h, ctx.w)
    return np.stack([cy, cx], 1), r
