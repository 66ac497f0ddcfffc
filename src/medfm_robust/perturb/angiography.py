"""Angiography perturbation (1): haze (veiling glare / fog, I = J t + A (1 - t))."""

from __future__ import annotations

import numpy as np

from medfm_robust.perturb._common import Context, smooth_field
from medfm_robust.perturb.registry import ParamSpec, register


@register(
    "haze",
    family="angiography",
    param=ParamSpec(
        "density",
        0.005,
        0.8,
        "veil density",
        scale="linear",
        bound="transmission >= ~0.2 at the densest veil: the vessels stay faintly visible",
    ),
)
def haze(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Haze (veiling glare): a smooth, uneven bright veil, I = J t + A (1 - t), with transmission
    t = 1 - d (0.7 + 0.3 f) and f a smooth random field in [0, 1]."""
    f = (smooth_field(rng, ctx.h, ctx.w, n_terms=4, max_cycles=1.0) * 0.5 + 0.5)[:, :, None]
    airlight = np.float32(rng.uniform(0.8, 0.95))
    veil = np.float32(0.7) + np.float32(0.3) * f

    def op(p: float) -> np.ndarray:
        t = 1 - np.float32(p) * veil
        return ctx.x * t + airlight * (1 - t)

    return op
