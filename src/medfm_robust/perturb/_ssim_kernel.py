"""Compiled kernels of the project's SSIM (see :mod:`medfm_robust.perturb.ssim` for the definition).

The separable Gaussian filter (11 taps, symmetric: ``w5 v5 + sum_k w_k (v_k + v_{10-k})``, in that order)
and the SSIM formula run in one pass per channel, over the valid interior only, in float32 with the sums
of the SSIM map in float64. Numba compiles them without fast-math, so every operation is a plain IEEE
float32 operation (no reassociation, no fused multiply-add): the results are bit-identical on every x86-64
CPU, whatever its vector width. Compiled code is cached on disk (``cache=True``); the first call in a
fresh checkout compiles for about a second.
"""

from __future__ import annotations

import numba as nb
import numpy as np

R = 5  # window radius: 11 taps


@nb.njit(cache=True, boundscheck=False)
def _row(src: np.ndarray, out: np.ndarray, w: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[j]`` = the filter of the 1-D float32 ``src`` centred at ``j + R`` (len(src) - 2R outputs)."""
    for j in range(out.shape[0]):
        acc = w[R] * src[j + R]
        for k in range(R):
            acc += w[k] * (src[j + k] + src[j + 2 * R - k])
        out[j] = acc


@nb.njit(cache=True, boundscheck=False)
def _column(h: np.ndarray, i: int, out: np.ndarray, w: np.ndarray) -> None:  # pragma: no cover
    """``out[j]`` = the filter down column ``j`` of the row-filtered ``h`` centred at row ``i + R``."""
    n = out.shape[0]
    for j in range(n):
        out[j] = w[R] * h[i + R, j]
    for k in range(R):
        wk = w[k]
        for j in range(n):
            out[j] += wk * (h[i + k, j] + h[i + 2 * R - k, j])


@nb.njit(cache=True, boundscheck=False)
def filter_interior(plane: np.ndarray, w: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Gaussian-filtered valid interior of one ``H x W`` float32 plane: ``(H - 2R) x (W - 2R)`` float32."""
    hgt, wid = plane.shape
    h = np.empty((hgt, wid - 2 * R), np.float32)
    for r in range(hgt):
        _row(plane[r], h[r], w)
    out = np.empty((hgt - 2 * R, wid - 2 * R), np.float32)
    for i in range(hgt - 2 * R):
        _column(h, i, out[i], w)
    return out


@nb.njit(cache=True, boundscheck=False)
def ssim_sum(
    y: np.ndarray,
    scale: np.float32,
    two_x: np.ndarray,
    two_mu_x: np.ndarray,
    mu_x2_c1: np.ndarray,
    var_x_c2: np.ndarray,
    c1: np.float32,
    c2: np.float32,
    w: np.ndarray,
    hbuf: np.ndarray,
) -> float:  # pragma: no cover - compiled
    """Sum of the SSIM map over the interior for one channel.

    ``y``: ``H x W`` uint8/uint16 plane of the compared image, scaled by ``scale`` (1 / data range);
    ``two_x``: ``H x W`` float32, twice the reference plane; ``two_mu_x``, ``mu_x2_c1`` (mu_x^2 + C1),
    ``var_x_c2`` (var_x + C2): the reference's ``(H - 2R) x (W - 2R)`` statistics; ``hbuf``: a
    ``3 x H x (W - 2R)`` float32 work buffer. Returns the float64 sum (rows in order).
    """
    hgt, wid = y.shape
    iw = wid - 2 * R
    yv = np.empty(wid, np.float32)
    yy = np.empty(wid, np.float32)
    xy = np.empty(wid, np.float32)
    for r in range(hgt):
        for j in range(wid):
            v = np.float32(y[r, j]) * scale
            yv[j] = v
            yy[j] = v * v
            xy[j] = two_x[r, j] * v  # (2 x) y: its filter is 2 E[xy]
        _row(yv, hbuf[0, r], w)
        _row(yy, hbuf[1, r], w)
        _row(xy, hbuf[2, r], w)
    mu = np.empty(iw, np.float32)
    e2 = np.empty(iw, np.float32)
    exy2 = np.empty(iw, np.float32)
    total = 0.0
    for i in range(hgt - 2 * R):
        _column(hbuf[0], i, mu, w)
        _column(hbuf[1], i, e2, w)
        _column(hbuf[2], i, exy2, w)
        row = 0.0
        for j in range(iw):
            m = two_mu_x[i, j] * mu[j]  # 2 mu_x mu_y
            my2 = mu[j] * mu[j]
            num = (m + c1) * ((exy2[j] - m) + c2)  # (2 mu_x mu_y + C1)(2 cov + C2)
            den = (my2 + mu_x2_c1[i, j]) * ((e2[j] - my2) + var_x_c2[i, j])
            row += num / den
        total += row
    return total
