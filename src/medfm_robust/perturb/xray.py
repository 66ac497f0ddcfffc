"""X-ray perturbations (4): scatter, underexposure, overexposure_xray, grid_lines.

Displayed radiographs are bright where attenuation is high; scatter, over-exposure and grid lines use the
transmitted fraction ``T = 1 - x``, under-exposure the log-domain model in its docstring.
Images are float32 ``H x W x C`` in [0, 1] units of the dtype range.
"""

from __future__ import annotations

import numpy as np

from medfm_robust.perturb._common import Context, fft_filter, gaussian_transfer
from medfm_robust.perturb.registry import ParamSpec, register


@register(
    "scatter",
    family="xray",
    param=ParamSpec(
        "ratio",
        0.005,
        10.0,
        "scatter-to-primary ratio",
        bound="SPR <= 10: thick body parts without an anti-scatter grid reach SPR 5-10",
    ),
)
def scatter(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Compton scatter / veiling glare: a broad low-pass copy added per channel, (x + r B) / (1 + r)."""
    sigma = rng.uniform(0.06, 0.12) * min(ctx.h, ctx.w)
    blurred = fft_filter(ctx, gaussian_transfer(ctx, sigma))

    def op(p: float) -> np.ndarray:
        r = np.float32(p)
        return (ctx.x + r * blurred) / (1 + r)

    return op


@register(
    "underexposure",
    family="xray",
    param=ParamSpec(
        "dose",
        0.999,
        0.01,
        "fraction of the nominal dose",
        bound="dose >= 1 % of nominal (6.6 stops under): beyond any AEC or technique error",
    ),
)
def underexposure(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Low dose: quantum mottle, strongest in dense (bright) regions where few photons arrive.

    With the displayed value x proportional to attenuation (transmission T = exp(-3 x)) and N = N0 dose T
    detected photons, the noise std of x is exp(1.5 x) / (3 sqrt(N0 dose)) (Poisson, Gaussian approximation;
    N0 = 20000 gives about 0.5 % noise at mid-grey at full dose). The noise already present at full dose is
    not added again: the extra std is scaled by 1 / sqrt(dose) - 1.
    """
    noise = rng.standard_normal((ctx.h, ctx.w, 1)).astype(np.float32)
    t = noise * np.exp(np.float32(1.5) * ctx.x) / np.float32(3 * np.sqrt(20000.0))

    def op(p: float) -> np.ndarray:
        return ctx.x + t * np.float32(1 / np.sqrt(p) - 1)

    return op


@register(
    "overexposure_xray",
    family="xray",
    param=ParamSpec(
        "exposure",
        1.001,
        16.0,
        "exposure factor",
        pivot=1.0,
        bound="<= 16x the nominal exposure (4 stops over): a gross technique error",
    ),
)
def overexposure_xray(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Over-exposure / detector saturation: T' = min(1, T E), so thin tissue burns out to black first."""
    del rng
    t = 1 - ctx.x
    return lambda p: 1 - np.minimum(t * np.float32(p), 1)


@register(
    "grid_lines",
    family="xray",
    param=ParamSpec(
        "depth",
        0.002,
        1.0,
        "line absorption",
        bound="a grid line absorbs at most all of the beam",
    ),
)
def grid_lines(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Anti-scatter grid lines: periodic absorption stripes (period 3-8 px, random orientation and phase)."""
    yy, xx = ctx.grid()
    period = rng.uniform(3, 8)
    theta = rng.choice([0.0, np.pi / 2]) + rng.uniform(-0.05, 0.05)
    coord = xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))
    stripe = (0.5 + 0.5 * np.cos(2 * np.pi * coord / np.float32(period) + rng.uniform(0, 2 * np.pi)))[
        :, :, None
    ]
    t = 1 - ctx.x

    def op(p: float) -> np.ndarray:
        return 1 - t * (1 - np.float32(p) * stripe)

    return op
