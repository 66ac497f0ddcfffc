"""The compiled SSIM kernel is plain IEEE float32 arithmetic (the project's determinism across CPUs).

A NumPy re-statement of the kernel's exact operation sequence (NumPy's element-wise float32 operations are
IEEE-exact on every CPU, with no fused multiply-add) must give bit-identical scores. A compiler that fused
multiply-adds or reassociated sums on some CPU (vector widths differ between machines) would fail here.
"""

from __future__ import annotations

import numpy as np
import pytest

from medfm_robust.perturb.ssim import _C1, _C2, _W, RADIUS, SSIMReference

R = RADIUS


def _filter_rows(p: np.ndarray) -> np.ndarray:
    """Row pass as the kernel orders it: w5 v5, then + w_k (v_k + v_{10-k}) for k = 0..4 (float32)."""
    n = p.shape[1] - 2 * R
    acc = _W[R] * p[:, R : R + n]
    for k in range(R):
        acc = acc + _W[k] * (p[:, k : k + n] + p[:, 2 * R - k : 2 * R - k + n])
    return acc


def _filter_cols(h: np.ndarray) -> np.ndarray:
    n = h.shape[0] - 2 * R
    acc = _W[R] * h[R : R + n]
    for k in range(R):
        acc = acc + _W[k] * (h[k : k + n] + h[2 * R - k : 2 * R - k + n])
    return acc


def _numpy_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    scale = np.float32(1.0 / data_range)
    xs = [a] if a.ndim == 2 else [a[..., c] for c in range(a.shape[2])]
    ys = [b] if b.ndim == 2 else [b[..., c] for c in range(b.shape[2])]
    total = 0.0
    for xp, yp in zip(xs, ys, strict=True):
        x = xp.astype(np.float32) * scale
        y = yp.astype(np.float32) * scale
        mu_x = _filter_cols(_filter_rows(x))
        var_x = _filter_cols(_filter_rows(x * x)) - mu_x * mu_x
        mu = _filter_cols(_filter_rows(y))
        e2 = _filter_cols(_filter_rows(y * y))
        exy2 = _filter_cols(_filter_rows((2 * x) * y))
        m = (2 * mu_x) * mu
        my2 = mu * mu
        s = ((m + _C1) * ((exy2 - m) + _C2)) / ((my2 + (mu_x * mu_x + _C1)) * ((e2 - my2) + (var_x + _C2)))
        plane_sum = 0.0
        for row in s.astype(np.float64):  # the kernel sums each row in order, then the rows in order
            row_sum = 0.0
            for v in row:
                row_sum += v
            plane_sum += row_sum
        total += plane_sum / s.size
    return total / len(xs)


@pytest.mark.parametrize(
    ("shape", "dtype", "data_range"), [((23, 31, 3), np.uint8, 255.0), ((29, 17), np.uint16, 1300.0)]
)
def test_compiled_ssim_is_bit_identical_to_plain_float32_arithmetic(
    shape: tuple[int, ...], dtype: type, data_range: float
) -> None:
    rng = np.random.default_rng(11)
    top = int(data_range)
    a = rng.integers(0, top + 1, shape).astype(dtype)
    b = np.clip(a.astype(np.int64) + rng.integers(-top // 8, top // 8 + 1, shape), 0, top).astype(dtype)
    got = SSIMReference(a, data_range).score(b)
    assert got == _numpy_ssim(a, b, data_range)
    assert 0.2 < got < 0.99  # a real comparison, not a degenerate one
