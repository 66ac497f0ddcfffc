"""MRI perturbations (3): bias_field, ghosting, kspace_motion (k-space models, correct frequency indexing).

Images are float32 ``H x W x C`` in [0, 1] units of the dtype range.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from medfm_robust.perturb._common import Context, smooth_field
from medfm_robust.perturb.registry import ParamSpec, register


@register(
    "bias_field",
    family="mri",
    param=ParamSpec(
        "strength",
        0.01,
        0.693,
        "log-gain amplitude",
        bound="gain within [0.5, 2] (ln 2): beyond what uncorrected 3 T head/body coil bias shows",
    ),
)
def bias_field(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Smooth multiplicative intensity inhomogeneity (RF coil bias): x exp(a f), f smooth in [-1, 1]."""
    f = smooth_field(rng, ctx.h, ctx.w, n_terms=5, max_cycles=1.0)[:, :, None]
    return lambda p: ctx.x * np.exp(np.float32(p) * f)


@register(
    "ghosting",
    family="mri",
    param=ParamSpec(
        "amplitude",
        0.005,
        1.0,
        "k-space line modulation",
        bound="a <= 1: at most every n-th k-space line is lost entirely (a > 1 would invert it)",
    ),
)
def ghosting(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Periodic-motion ghosts along the phase-encoding axis: every n-th k-space line (n = 2..4) scaled by
    1 - a.

    Ghost replicas appear at offsets of N/n pixels (never zero); the magnitude image is returned.
    """
    axis = int(rng.integers(0, 2))
    period = int(rng.integers(2, 5))
    offset = int(rng.integers(0, period))
    spec = sfft.fft(ctx.x, axis=axis, workers=1)
    n = ctx.x.shape[axis]
    keep = (np.arange(n) % period) == offset
    shape = [1, 1, 1]
    shape[axis] = n
    comb = keep.reshape(shape)
    # the part each unit of a removes
    ghost = sfft.ifft(spec * comb, axis=axis, workers=1).astype(np.complex64)
    gr, gi = ghost.real, ghost.imag

    def op(p: float) -> np.ndarray:
        a = np.float32(p)
        re = ctx.x - a * gr
        im = a * gi
        return np.sqrt(re * re + im * im)

    return op


@register(
    "kspace_motion",
    family="mri",
    param=ParamSpec(
        "shift",
        0.0002,
        0.08,
        "peak displacement, fraction of the field of view",
        bound="<= 8 % of the FOV (2 cm on a 25 cm head FOV): severe motion of an uncooperative patient",
    ),
)
def kspace_motion(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Rigid in-plane motion during acquisition: corrupted k-space lines get the linear phase of a shift.

    The phase ramp uses the frequencies of the unshifted spectrum (fftfreq), the central 4 % of lines are
    protected (so the object does not move as a whole), and about 75 % of the other lines, in contiguous
    segments, carry a displacement d * u (u in [-1, 1]) along a random direction. Magnitude image.

    Segments are contiguous in *acquisition time* of a line-by-line Cartesian readout (phase-encoding
    lines acquired from -k_max to +k_max, ``ky = -H/2 .. H/2 - 1``): one motion episode covers
    neighbouring lines of that sweep, never +k_max together with -k_max as contiguity in FFT order would.
    """
    h, w = ctx.h, ctx.w
    spec = sfft.fft2(ctx.x, axes=(0, 1), workers=1).astype(np.complex64)
    ky = np.fft.fftfreq(h).astype(np.float32)
    kx = np.fft.fftfreq(w).astype(np.float32)
    n_seg = int(rng.integers(6, 16))
    cuts = np.sort(rng.choice(np.arange(1, h), size=n_seg - 1, replace=False))
    # FFT row r holds ky = r (r < H/2) or r - H; a linear sweep acquires it at time (ky + H//2)
    acquired_at = (np.arange(h) + h // 2) % h
    seg = np.searchsorted(cuts, acquired_at, side="right")
    u = rng.uniform(-1, 1, n_seg).astype(np.float32)
    u /= max(float(np.abs(u).max()), 1e-6)
    active = rng.random(n_seg) < 0.75
    active[rng.choice(n_seg, size=3, replace=False)] = True
    disp = np.where(active[seg], u[seg], 0).astype(np.float32)
    disp[np.abs(ky) < 0.02] = 0
    theta = rng.uniform(0, 2 * np.pi)
    dy, dx = np.float32(np.sin(theta)), np.float32(np.cos(theta))
    # phase (cycles) per unit of the parameter: shift (pixels) = p * size along each axis
    base = (ky[:, None] * dy * h + kx[None, :] * dx * w) * disp[:, None]

    def op(p: float) -> np.ndarray:
        ph = np.exp(np.complex64(-2j * np.pi * p) * base)[:, :, None]
        return np.abs(sfft.ifft2(spec * ph, axes=(0, 1), workers=1)).astype(np.float32)

    op.segment = seg  # type: ignore[attr-defined]  # motion episode of each FFT row (for inspection)
    return op
