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

It agrees with skimage to ~1e-6 (float32 arithmetic; tested to 1e-4) and is several times faster because
the separable filter is OpenCV's (SIMD, float32) and the reference image's local mean and variance are
computed once per image (:class:`SSIMReference`) and reused across a calibration search.
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


def _filter(plane: np.ndarray, dst: np.ndarray | None = None) -> np.ndarray:
    """Separable Gaussian filter of one ``H x W`` float32 plane (into ``dst``, an optional preallocated
    ``H x W`` float32 output). Only the valid ``(H-10) x (W-10)`` interior is used: it is exactly what
    skimage keeps after its border crop, and it does not depend on the padding mode. OpenCV's SIMD
    separable filter on contiguous planes is several times faster than a NumPy pair-sum filter (and than
    filtering channel-interleaved maps, whose de-interleaving costs more).
    """
    return cv2.sepFilter2D(plane, cv2.CV_32F, _W, _W, dst=dst, borderType=cv2.BORDER_CONSTANT)


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
    SSIM (float, in [-1, 1]). The reference's local mean and variance are computed once; the work buffers
    are allocated once per reference (fresh multi-megabyte arrays on every call cost as much again in page
    faults), so one instance must not be scored from several threads at once. The SSIM formula runs on
    whole contiguous ``C x H x W`` maps (element-wise NumPy on strided interior views is 3-4x slower); only
    the interior is averaged, so the result is the same as computing the formula on the interior alone.
    """

    def __init__(self, image: np.ndarray, data_range: float | None = None) -> None:
        _check_pair(image, image)
        self.data_range = default_data_range(image, data_range)
        self.shape = image.shape
        self.dtype = image.dtype
        c = 1 if image.ndim == 2 else image.shape[2]
        h, w = image.shape[:2]
        self.x = _planes(image, np.empty((c, h, w), np.float32), self.data_range)
        mu = np.stack([_filter(p) for p in self.x])
        var = np.stack([_filter(p * p) for p in self.x]) - mu * mu
        self._two_x = 2 * self.x  # the third stacked plane is (2x) y: its filter is 2 E[xy] (exact)
        self._two_mu_x = 2 * mu
        self._mu_x2_c1 = mu * mu + _C1
        self._var_x_c2 = var + _C2
        self._stack = np.empty((3 * c, h, w), np.float32)  # y, y^2, 2 x y
        self._filtered = np.empty((3 * c, h, w), np.float32)
        self._tmp = np.empty((3, c, h, w), np.float32)
        self._interior = np.empty((c, h - 2 * RADIUS, w - 2 * RADIUS), np.float32)

    def score(self, other: np.ndarray) -> float:
        """SSIM(reference, ``other``) by the module's definition."""
        if other.shape != self.shape or other.dtype != self.dtype:
            raise DataError(f"SSIM reference is {self.shape} {self.dtype}, got {other.shape} {other.dtype}")
        c = self.x.shape[0]
        stack, filt = self._stack, self._filtered
        y = _planes(other, stack[:c], self.data_range)
        np.multiply(y, y, out=stack[c : 2 * c])
        np.multiply(self._two_x, y, out=stack[2 * c :])
        # one call over the planes stacked vertically: a window only crosses into the next plane in the
        # 5-row border that is cropped, so the interior is exactly the per-plane filter
        h, w = self.shape[:2]
        _filter(stack.reshape(3 * c * h, w), filt.reshape(3 * c * h, w))
        mu_y, yy, xy2 = filt[:c], filt[c : 2 * c], filt[2 * c :]
        mxy, cov, den = self._tmp
        # SSIM = (2 mu_x mu_y + C1)(2 cov + C2) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2)); doubling is
        # exact in floating point (also through the linear filter), so 2 mu_x mu_y is (2 mu_x) mu_y and
        # 2 cov is E[2 x y] - 2 mu_x mu_y
        np.multiply(self._two_mu_x, mu_y, out=mxy)  # 2 mu_x mu_y
        np.subtract(xy2, mxy, out=cov)  # 2 cov
        np.multiply(mu_y, mu_y, out=den)  # mu_y^2
        np.subtract(yy, den, out=yy)  # var_y
        yy += self._var_x_c2
        den += self._mu_x2_c1
        den *= yy
        mxy += _C1
        cov += _C2
        mxy *= cov
        mxy /= den
        inner = self._interior
        np.copyto(inner, mxy[:, RADIUS:-RADIUS, RADIUS:-RADIUS])  # contiguous: a fixed summation order
        total = 0.0
        for plane in inner:
            total += float(plane.sum(dtype=np.float64)) / plane.size
        return total / c


def ssim(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    """SSIM of two same-shape, same-dtype uint8/uint16 images (``H x W`` or ``H x W x C``); ``a`` is the
    reference (its range is the default ``data_range`` of uint16 images)."""
    _check_pair(a, b)
    return SSIMReference(a, data_range).score(b)
