"""The 12 modality-agnostic (base) perturbations.

Every ``prepare(ctx, rng)`` draws its randomness once and returns ``op(p)`` (see ``registry``); images are
float32 ``H x W x C`` in [0, 1] units of the dtype range.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from medfm_robust.perturb._common import (
    Context,
    affine_warp,
    affine_warp_mask,
    centre_affine,
    fft_filter,
    gaussian_transfer,
    kernel_transfer,
    max_kernel_radius,
)
from medfm_robust.perturb.registry import ParamSpec, register, rng_array


class AffineOp:
    """A label-moving op: ``inv(p)`` gives the Pillow inverse-affine tuple for parameter ``p``."""

    def __init__(self, ctx: Context, inv) -> None:  # type: ignore[no-untyped-def]
        self.ctx, self.inv = ctx, inv

    def __call__(self, p: float) -> np.ndarray:
        return affine_warp(self.ctx, self.inv(p))

    def move_mask(self, p: float, mask: np.ndarray) -> np.ndarray:
        return affine_warp_mask(mask, self.inv(p))


@register(
    "gaussian_noise",
    family="base",
    param=ParamSpec(
        "sigma",
        0.002,
        0.5,
        "standard deviation, fraction of the black-to-white range",
        bound="sigma <= half the image range: beyond it clipping turns the noise into a binary pattern",
    ),
)
def gaussian_noise(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Additive white Gaussian noise, independent per pixel and channel."""
    noise = rng_array(rng, ctx.x.shape)
    return lambda p: ctx.x + np.float32(p) * noise


@register(
    "salt_pepper_noise",
    family="base",
    param=ParamSpec(
        "amount",
        1e-4,
        0.5,
        "fraction of pixels set to black or white",
        bound="at most half the pixels corrupted: beyond that the impulses, not the image, are the content",
    ),
)
def salt_pepper_noise(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Impulse noise: a fraction of pixels (all channels) set to the dtype maximum (salt) or 0 (pepper)."""
    u = rng.random((ctx.h, ctx.w, 1), dtype=np.float32)

    def op(p: float) -> np.ndarray:
        out = ctx.x.copy()
        np.copyto(out, np.float32(0), where=u < np.float32(p))  # pepper, then salt on its lower half
        np.copyto(out, np.float32(1), where=u < np.float32(p / 2))
        return out

    return op


@register(
    "speckle_noise",
    family="base",
    param=ParamSpec(
        "sigma",
        0.005,
        1.0,
        "relative standard deviation",
        bound="contrast std/mean <= 1: fully developed speckle has contrast 1 (Goodman 1975)",
    ),
)
def speckle_noise(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Multiplicative Gaussian noise x(1 + sigma n), with a 2 % floor so black regions get a little too."""
    noise = rng_array(rng, ctx.x.shape)
    base = ctx.x + np.float32(0.02)
    return lambda p: ctx.x + np.float32(p) * noise * base


@register(
    "gaussian_blur",
    family="base",
    param=ParamSpec(
        "sigma",
        0.15,
        20.0,
        "pixels",
        bound="sigma <= 20 px (FWHM 47 px, a fifth of a 256-px frame): beyond, only coarse shapes remain",
    ),
)
def gaussian_blur(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Gaussian blur (isotropic, reflect-padded borders) with standard deviation sigma pixels."""
    del rng
    return lambda p: fft_filter(ctx, gaussian_transfer(ctx, p))


def line_kernel(length: float, angle: float, max_radius: int) -> np.ndarray:
    """Normalised anti-aliased line kernel of ``length`` pixels at ``angle`` (radians), odd square size."""
    r = min(max_radius, math.ceil(length / 2) + 1)
    k = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    n = max(2, math.ceil(length * 4) + 1)
    s = np.linspace(-length / 2, length / 2, n)
    ys, xs = r + s * math.sin(angle), r + s * math.cos(angle)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yi, xi = np.clip(y0 + dy, 0, 2 * r), np.clip(x0 + dx, 0, 2 * r)
            np.add.at(k, (yi, xi), (wy * wx).astype(np.float32))
    return k / k.sum()


@register(
    "motion_blur",
    family="base",
    param=ParamSpec(
        "length",
        0.3,
        60.0,
        "pixels",
        bound="<= 60 px (a quarter of a 256-px frame) of motion during one exposure: gross patient motion",
    ),
)
def motion_blur(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Linear camera/patient motion blur: a normalised line kernel of the given length at a random angle."""
    angle = float(rng.uniform(0, math.pi))
    rmax = max_kernel_radius(ctx)
    return lambda p: fft_filter(ctx, kernel_transfer(ctx, line_kernel(p, angle, rmax)))


@register(
    "brightness",
    family="base",
    param=ParamSpec(
        "offset",
        0.002,
        0.4,
        "fraction of the black-to-white range",
        bound="offset <= 40 % of the range: mid-grey stays inside it (no black-out or white-out to flat)",
    ),
)
def brightness(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Global brightness change: a constant offset (random sign), clipped to the dtype range."""
    sign = np.float32(1 if rng.random() < 0.5 else -1)
    return lambda p: ctx.x + sign * np.float32(p)


@register(
    "contrast",
    family="base",
    param=ParamSpec(
        "reduction",
        0.002,
        0.8,
        "fraction of contrast removed",
        bound="keeps >= 20 % of the contrast: never a flat field",
    ),
)
def contrast(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Contrast reduction towards the per-channel mean: mean + (x - mean)(1 - reduction)."""
    del rng
    mean = ctx.x.reshape(-1, ctx.c).mean(axis=0).astype(np.float32)
    dev = ctx.x - mean
    return lambda p: mean + dev * np.float32(1 - p)


# JPEG Annex K base quantisation tables (natural order), scaled as libjpeg does for a quality setting.
_JPEG_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float64,
)  # fmt: skip
_JPEG_CHROMA = np.full(64, 99.0)
_JPEG_CHROMA[[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 24, 25]] = [
    17,
    18,
    24,
    47,
    18,
    21,
    26,
    66,
    24,
    26,
    56,
    47,
    66,
]


def jpeg_qtables(quality: float, colour: bool) -> list[list[int]]:
    """libjpeg's quality scaling (5000 / Q below 50, 200 - 2 Q above) of the Annex K tables, for a
    continuous quality in [1, 100]; at integer qualities the tables equal libjpeg's own."""
    q = min(max(float(quality), 1.0), 100.0)
    s = 5000.0 / q if q < 50 else 200.0 - 2.0 * q
    bases = (_JPEG_LUMA, _JPEG_CHROMA) if colour else (_JPEG_LUMA,)
    return [np.clip(np.floor((t * s + 50) / 100), 1, 255).astype(int).tolist() for t in bases]


def jpeg_round_trip(x: np.ndarray, quality: float) -> np.ndarray:
    """JPEG-encode ``H x W x C`` float [0, 1] at 8 bits and decode; float32 out.

    Colour uses full-resolution chroma (4:4:4) above quality 50 and 4:2:0 sub-sampling at 50 and below, as
    high-quality encoders do; so the strength grows monotonically as the quality falls.
    """
    u8 = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
    colour = u8.shape[2] == 3
    im = Image.fromarray(u8 if colour else u8[:, :, 0])
    buf = io.BytesIO()
    im.save(buf, format="JPEG", qtables=jpeg_qtables(quality, colour), subsampling=0 if quality > 50 else 2)
    buf.seek(0)
    with Image.open(buf) as dec:
        out = np.asarray(dec, dtype=np.float32) / np.float32(255)
    return out.reshape(x.shape)


@register(
    "jpeg_compression",
    family="base",
    param=ParamSpec(
        "quality",
        98,
        1,
        "JPEG quality (libjpeg scaling, continuous)",
        pivot=100.0,
        bound="quality 1 is the lowest setting an encoder offers (libjpeg/OpenCV accept 1..100)",
    ),
)
def jpeg_compression(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """JPEG compression artefacts (blocking, ringing, chroma loss); 16-bit images are compressed at 8 bits.

    The quality is continuous: quantisation tables are libjpeg's scaling of the standard tables (identical
    to libjpeg at integer qualities), so the calibration is not limited to integer steps.
    """
    del rng
    return lambda p: jpeg_round_trip(ctx.x, p)


@register(
    "pixelate",
    family="base",
    param=ParamSpec(
        "block",
        1.02,
        32.0,
        "pixels per block",
        bound="<= 32 px blocks (an 8 x 8 grid at 256 px): the coarsest plausible down-sampling on transfer",
    ),
)
def pixelate(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Pixelation: area-average down-sampling by the block size, nearest-neighbour up-sampling."""
    del rng

    def op(p: float) -> np.ndarray:
        mh, mw = max(1, round(ctx.h / p)), max(1, round(ctx.w / p))
        out = np.empty_like(ctx.x)
        for c in range(ctx.c):
            im = Image.fromarray(np.ascontiguousarray(ctx.x[:, :, c]))
            small = im.resize((mw, mh), Image.Resampling.BOX)
            out[:, :, c] = np.asarray(small.resize((ctx.w, ctx.h), Image.Resampling.NEAREST))
        return out

    return op


@register(
    "rotation",
    family="base",
    param=ParamSpec("angle", 0.05, 180.0, "degrees", bound="180 degrees is the end of rotation"),
    moves_labels=True,
)
def rotation(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """In-plane rotation about the image centre (random sign), bilinear, constant background fill."""
    sign = 1.0 if rng.random() < 0.5 else -1.0

    def inv(p: float) -> tuple[float, ...]:
        a = math.radians(sign * p)
        ca, sa = math.cos(a), math.sin(a)
        return centre_affine(ctx, ca, -sa, sa, ca)

    return AffineOp(ctx, inv)


@register(
    "scale",
    family="base",
    param=ParamSpec(
        "factor",
        0.999,
        0.25,
        "zoom factor (< 1 shrinks)",
        pivot=1.0,
        bound="zoom >= 0.25 (a 4x wider field of view): the object keeps >= 1/16 of the frame",
    ),
    moves_labels=True,
)
def scale(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Zoom-out about the image centre by the factor, bilinear, constant background fill."""
    del rng
    return AffineOp(ctx, lambda p: centre_affine(ctx, 1 / p, 0.0, 0.0, 1 / p))


@register(
    "translation",
    family="base",
    param=ParamSpec(
        "shift",
        0.0005,
        0.45,
        "fraction of the image size",
        bound="shift <= 45 % of the size: a centred object stays partly in view",
    ),
    moves_labels=True,
)
def translation(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Sub-pixel translation in a random direction, bilinear, constant background fill."""
    theta = float(rng.uniform(0, 2 * math.pi))
    ux, uy = math.cos(theta), math.sin(theta)
    return AffineOp(ctx, lambda p: centre_affine(ctx, 1.0, 0.0, 0.0, 1.0, p * ctx.w * ux, p * ctx.h * uy))
