"""Drawing primitives for the synthetic demo images: textures, irregular blobs, tubes, speckle.

All functions work on ``float32`` arrays of shape ``H x W`` (or ``H x W x 3``) with values in about
[0, 1] and draw every random number from the ``numpy.random.Generator`` they are given.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi


@lru_cache(maxsize=4)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(yy, xx)``, each ``size x size`` float32 (read-only)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def smooth_noise(
    rng: np.random.Generator, size: int | tuple[int, int], sigma: float, anisotropy: float = 1.0
) -> np.ndarray:
    """Gaussian-filtered white noise, zero mean and unit standard deviation, float32.

    ``size`` is the side of a square or an ``(H, W)`` shape; ``anisotropy`` > 1 stretches the texture
    horizontally (sigma_x = sigma * anisotropy).
    """
    shape = (size, size) if isinstance(size, int) else tuple(size)
    # Coarse textures are filtered on a grid f times smaller and upsampled bilinearly (same look, far
    # cheaper than a wide kernel at full resolution).
    f = 2 ** int(np.floor(np.log2(sigma / 1.5))) if sigma >= 3 else 1
    small = (-(-shape[0] // f) + 1, -(-shape[1] // f) + 1) if f > 1 else shape
    white = rng.standard_normal(small).astype(np.float32)
    out = ndi.gaussian_filter(white, (sigma / f, sigma * anisotropy / f), mode="wrap")
    if f > 1:
        out = ndi.zoom(out, f, order=1, grid_mode=False)[: shape[0], : shape[1]]
    out -= out.mean()
    return out / (out.std() + 1e-6)


def fractal_noise(
    rng: np.random.Generator,
    size: int,
    scales: tuple[float, ...] = (1, 2, 4, 8, 16),
    persistence: float = 0.6,
) -> np.ndarray:
    """Sum of :func:`smooth_noise` octaves (coarse octaves weigh more), zero mean, unit std."""
    out = np.zeros((size, size), np.float32)
    for k, s in enumerate(sorted(scales, reverse=True)):
        out += persistence**k * smooth_noise(rng, size, s)
    out -= out.mean()
    return out / (out.std() + 1e-6)


def blob(
    rng: np.random.Generator,
    size: int,
    center: tuple[float, float],
    radius: float,
    *,
    irregularity: float = 0.2,
    aspect: float = 1.0,
    angle: float = 0.0,
    roughness: float = 0.0,
) -> np.ndarray:
    """An organ- or lesion-like region (``size x size`` bool) with an irregular boundary.

    The boundary radius is ``radius * (1 + sum_k a_k cos(k theta + phi_k))`` for harmonics k = 2..7 with
    ``a_k ~ N(0, irregularity / k)``, stretched by ``aspect`` along the axis at ``angle`` (radians), plus
    ``roughness`` pixels of smooth boundary noise.
    """
    coef = [rng.normal(0.0, irregularity / k) * np.exp(1j * rng.uniform(0, 2 * np.pi)) for k in range(2, 8)]
    cy, cx = center
    ext = radius * (1 + sum(abs(c) for c in coef)) * max(aspect, 1.0) + 4 * roughness + 2
    y0, y1 = max(int(cy - ext), 0), min(int(cy + ext) + 2, size)
    x0, x1 = max(int(cx - ext), 0), min(int(cx + ext) + 2, size)
    out = np.zeros((size, size), bool)
    if y1 <= y0 or x1 <= x0:
        return out
    yy, xx = grid(size)
    dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
    ca, sa = np.cos(angle), np.sin(angle)
    u = (dx * ca + dy * sa) / aspect
    v = -dx * sa + dy * ca
    r = np.hypot(u, v)
    z = (u + 1j * v) / np.maximum(r, 1e-6)  # exp(i theta)
    zk = z * z
    bound = np.ones_like(r)
    for c in coef:  # harmonics k = 2..7: Re(c * z^k) = |c| cos(k theta + phase)
        bound += (c * zk).real
        zk = zk * z
    limit = radius * np.clip(bound, 0.35, None)
    if roughness > 0:
        limit = limit + roughness * smooth_noise(rng, r.shape, 2.5)
    out[y0:y1, x0:x1] = r < limit
    return out


def soften(mask: np.ndarray, sigma: float) -> np.ndarray:
    """A float32 soft version of a bool mask (Gaussian edge of width ``sigma`` pixels)."""
    m = mask.astype(np.float32)
    return ndi.gaussian_filter(m, sigma) if sigma > 0 else m


def random_path(
    rng: np.random.Generator,
    start: tuple[float, float],
    angle: float,
    length: float,
    curvature: float = 0.05,
    drift: float = 0.0,
) -> np.ndarray:
    """A smooth random curve of ``length`` unit steps from ``start`` (y, x) heading ``angle`` (radians),
    turning randomly (``curvature``) plus ``drift`` radians per step.

    Returns ``N x 2`` float32 points (y, x).
    """
    n = max(int(length), 2)
    turns = ndi.gaussian_filter1d(rng.normal(0.0, curvature, n), 4) * 4 + drift
    heading = angle + np.cumsum(turns)
    steps = np.stack([np.sin(heading), np.cos(heading)], axis=1)
    return (np.asarray(start, np.float32) + np.cumsum(steps, axis=0)).astype(np.float32)


def tubes(size: int, paths: list[np.ndarray], widths: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise curves as tubes of per-point half-width; returns (profile float32 in [0, 1], mask bool).

    ``profile`` is ``sqrt(1 - (d / w)^2)`` (a cylinder's projected thickness) where ``d`` is the distance
    to the nearest centre-line point and ``w`` that point's half-width.
    """
    free = np.ones((size, size), bool)
    width_at = np.zeros((size, size), np.float32)
    for pts, w in zip(paths, widths, strict=True):
        ij = np.rint(pts).astype(int)
        ok = (ij[:, 0] >= 0) & (ij[:, 0] < size) & (ij[:, 1] >= 0) & (ij[:, 1] < size)
        free[ij[ok, 0], ij[ok, 1]] = False
        width_at[ij[ok, 0], ij[ok, 1]] = np.maximum(width_at[ij[ok, 0], ij[ok, 1]], w[ok])
    if free.all():
        return np.zeros((size, size), np.float32), np.zeros((size, size), bool)
    dist, (iy, ix) = ndi.distance_transform_edt(free, return_indices=True)
    w = np.maximum(width_at[iy, ix], 0.5)
    ratio = np.clip(dist / w, 0, 1)
    return np.sqrt(1 - ratio**2).astype(np.float32), dist <= w


def scatter_discs(
    size: int, centers: np.ndarray, radii: np.ndarray, aspect: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Many small discs (e.g. nuclei) at ``centers`` (``N x 2`` y, x) with ``radii``; returns
    (profile float32 in [0, 1], label index int32 of the nearest centre, -1 outside)."""
    free = np.ones((size, size), bool)
    index = np.full((size, size), -1, np.int32)
    ij = np.clip(np.rint(centers).astype(int), 0, size - 1)
    free[ij[:, 0], ij[:, 1]] = False
    index[ij[:, 0], ij[:, 1]] = np.arange(len(ij), dtype=np.int32)
    if free.all():
        return np.zeros((size, size), np.float32), index
    dist, (iy, ix) = ndi.distance_transform_edt(free, return_indices=True)
    nearest = index[iy, ix]
    r = radii[nearest].astype(np.float32)
    if aspect is not None:
        yy, xx = grid(size)
        dy, dx = yy - centers[nearest, 0], (xx - centers[nearest, 1]) / aspect[nearest]
        dist = np.hypot(dy, dx)
    ratio = np.clip(dist / r, 0, 1)
    profile = np.sqrt(1 - ratio**2).astype(np.float32)
    return profile, np.where(ratio < 1, nearest, -1).astype(np.int32)


def speckle(rng: np.random.Generator, size: int, sigma: tuple[float, float] = (0.8, 1.6)) -> np.ndarray:
    """Fully developed ultrasound speckle: magnitude of filtered complex Gaussian noise, mean 1."""
    re_ = ndi.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    im_ = ndi.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    mag = np.hypot(re_, im_)
    return mag / (mag.mean() + 1e-6)


def vignette(size: int, strength: float, center: tuple[float, float] | None = None) -> np.ndarray:
    """Radial fall-off ``1 - strength * (r / r_max)^2`` (float32), 1 at ``center``."""
    yy, xx = grid(size)
    cy, cx = center if center is not None else ((size - 1) / 2, (size - 1) / 2)
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 2) ** 2)
    return np.clip(1 - strength * r2, 0, 1).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Clip a [0, 1] float image to uint8 (rounded)."""
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def point_inside(rng: np.random.Generator, region: np.ndarray, margin: float = 0.0) -> tuple[float, float]:
    """A random (y, x) inside ``region`` at least ``margin`` pixels from its border (fallback: anywhere in
    the region, then the image centre)."""
    inner = ndi.distance_transform_edt(region) > margin if margin > 0 else region
    ys, xs = np.nonzero(inner if inner.any() else region)
    if ys.size == 0:
        return (region.shape[0] / 2, region.shape[1] / 2)
    k = int(rng.integers(ys.size))
    return float(ys[k]), float(xs[k])


PI = float(np.pi)


def edge_start(rng: np.random.Generator, size: int) -> tuple[tuple[float, float], float]:
    """A point on the image border and a heading pointing inwards (roughly at the centre)."""
    t = rng.uniform(0, size - 1)
    side = int(rng.integers(4))
    y, x = [(0.0, t), (size - 1.0, t), (t, 0.0), (t, size - 1.0)][side]
    heading = float(np.arctan2(size / 2 - y, size / 2 - x) + rng.normal(0, 0.35))
    return (y, x), heading
