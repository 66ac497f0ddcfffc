"""The project's one SSIM definition (Wang et al. 2004), fast and with cached reference statistics.

Definition, used everywhere (calibration, reports, the ``medfm-robust ssim`` command):

- Gaussian-weighted local statistics with sigma 1.5, truncated at 3.5 sigma (an 11 x 11 window, as
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5)``);
- K1 = 0.01, K2 = 0.03, population (not sample) covariance;
- ``data_range``: the stored range that means black to white, the same for both images: 255 for uint8;
  for uint16 (raw scanner values, e.g. 0..~1300 for MRI) the reference image's own max - min (at least 1)
  unless given (e.g. from the shard's ``value_range``). Never re-normalised per image, so gain, offset and
  exposure changes are visible; never the uint16 dtype's 65535 (which would put every raw slice at SSIM ~1);
- the mean of the SSIM map after cropping the 5-pixel border that the window cannot cover (as skimage);
- colour: the mean over channels of the per-channel SSIM.

It agrees with skimage to ~1e-6 (float32 arithmetic; tested to 1e-4) and is several times faster: the
filter and the formula run in one compiled pass per channel over the interior
(:mod:`medfm_robust.perturb._ssim_kernel`, Numba without fast-math: plain IEEE float32 operations, so
bit-identical on every x86-64 CPU), and the reference image's local mean and variance are computed once per
image (:class:`SSIMReference`) and reused across a calibration search.
"""

from __future__ import annotations

import cv2
import numpy as np

from medfm_robust.errors import DataError

cv2.setNumThreads(1)  # one core per worker; parallelism comes from the workflow's jobs

SIGMA = 1.5
TRUNCATE = 3.5
K1 = 0.01
K2 = 0.03
RADIUS = int(TRUNCATE * SIGMA + 0.5)  # 5 -> an 11 x 11 window, as skimage
WIN_SIZE = 2 * RADIUS + 1

_W = np.exp(-0.5 * (np.arange(-RADIUS, RADIUS + 1) / SIGMA) ** 2)
_W = (_W / _W.sum()).astype(np.float32)
_C1 = np.float32(K1**2)  # in units of the data range (images are divided by it)
_C2 = np.float32(K2**2)


def dtype_range(dtype: np.dtype | type) -> float:
    """The full range of an integer image dtype (255 for uint8, 65535 for uint16)."""
    dt = np.dtype(dtype)
    if dt == np.uint8:
        return 255.0
    if dt == np.uint16:
        return 65535.0
    raise DataError(f"unsupported image dtype {dt} (expected uint8 or uint16)")


def default_data_range(image: np.ndarray, data_range: float | None = None) -> float:
    """The SSIM data range of ``image``: ``data_range`` if given (must be > 0), else 255 for uint8 and the
    image's own max - min (at least 1) for uint16."""
    if data_range is not None:
        if not (np.isfinite(data_range) and data_range > 0):
            raise DataError(f"data_range must be a positive number, got {data_range!r}")
        return float(data_range)
    dtype_range(image.dtype)  # validates the dtype
    if image.dtype == np.uint8:
        return 255.0
    return float(max(int(image.max()) - int(image.min()), 1))


def _planes(image: np.ndarray, out: np.ndarray, data_range: float) -> np.ndarray:
    """``H x W`` or ``H x W x C`` integer image -> ``C x H x W`` float32 in units of ``data_range``,
    written into ``out`` (channels split by OpenCV first: scaling contiguous planes is faster than a
    strided channel view)."""
    planes = [image] if image.ndim == 2 else cv2.split(image)
    for p, o in zip(planes, out, strict=True):
        np.multiply(p, np.float32(1.0 / data_range), out=o, casting="unsafe")
    return out


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise DataError(f"SSIM needs images of the same shape, got {a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        raise DataError(f"SSIM needs images of the same dtype, got {a.dtype} and {b.dtype}")
    if a.ndim not in (2, 3):
        raise DataError(f"SSIM needs H x W or H x W x C images, got shape {a.shape}")
    if min(a.shape[:2]) < WIN_SIZE:
        raise DataError(f"SSIM needs images of at least {WIN_SIZE} x {WIN_SIZE} pixels, got {a.shape[:2]}")


class SSIMReference:
    """SSIM against one fixed reference image, with its local statistics cached.

    ``image``: ``H x W`` or ``H x W x C`` uint8/uint16 (H, W >= 11); ``data_range``: see
    :func:`default_data_range`. :meth:`score` takes an image of the same shape and dtype and returns the
    SSIM (float, in [-1, 1]). The reference's local mean and variance (over the ``(H-10) x (W-10)``
    interior) are computed once, with the same compiled filter as the scores; the work buffer is allocated
    once per reference, so one instance must not be scored from several threads at once.
    """

    def __init__(self, image: np.ndarray, data_range: float | None = None) -> None:
        from medfm_robust.perturb import _ssim_kernel as kernel  # compiles (or loads) on first use

        _check_pair(image, image)
        self._kernel = kernel
        self.data_range = default_data_range(image, data_range)
        self.shape = image.shape
        self.dtype = image.dtype
        c = 1 if image.ndim == 2 else image.shape[2]
        h, w = image.shape[:2]
        x = _planes(image, np.empty((c, h, w), np.float32), self.data_range)
        mu = np.stack([kernel.filter_interior(p, _W) for p in x])
        var = np.stack([kernel.filter_interior(p * p, _W) for p in x]) - mu * mu
        self._two_x = 2 * x  # the compared image's third filtered plane is (2x) y: 2 E[xy], exactly
        self._two_mu_x = 2 * mu
        self._mu_x2_c1 = mu * mu + _C1
        self._var_x_c2 = var + _C2
        self._scale = np.float32(1.0 / self.data_range)
        self._hbuf = np.empty((3, h, w - 2 * RADIUS), np.float32)

    def score(self, other: np.ndarray) -> float:
        """SSIM(reference, ``other``) by the module's definition."""
        if other.shape != self.shape or other.dtype != self.dtype:
            raise DataError(f"SSIM reference is {self.shape} {self.dtype}, got {other.shape} {other.dtype}")
        planes = [other] if other.ndim == 2 else cv2.split(other)
        n = self._two_mu_x.shape[1] * self._two_mu_x.shape[2]
        total = 0.0
        for ch, plane in enumerate(planes):
            s = self._kernel.ssim_sum(
                np.ascontiguousarray(plane),
                self._scale,
                self._two_x[ch],
                self._two_mu_x[ch],
                self._mu_x2_c1[ch],
                self._var_x_c2[ch],
                _C1,
                _C2,
                _W,
                self._hbuf,
            )
            total += s / n
        return total / len(planes)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    """SSIM of two same-shape, same-dtype uint8/uint16 images (``H x W`` or ``H x W x C``); ``a`` is the
    reference (its range is the default ``data_range`` of uint16 images)."""
    _check_pair(a, b)
    return SSIMReference(a, data_range).score(b)
