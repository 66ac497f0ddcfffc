"""Ultrasound perturbations (2): acoustic_shadowing, reverberation.

Images are float32 ``H x W x C`` in [0, 1] units of the dtype range; the probe is at the top row.
"""

from __future__ import annotations

import numpy as np

from medfm_robust.perturb._common import Context
from medfm_robust.perturb.registry import ParamSpec, register


@register(
    "acoustic_shadowing",
    family="ultrasound",
    param=ParamSpec(
        "width",
        0.005,
        0.25,
        "shadow half-width, fraction of the image width",
        bound="half-width <= 25 % of the width: a shadow is as wide as its calculus/rib/bone",
    ),
)
def acoustic_shadowing(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Acoustic shadows behind strongly attenuating structures: 1-2 dark bands from a depth to the bottom.

    Attenuation grows with depth below the reflector (1 - 0.92 (1 - exp(-depth / 6 %))); the band widens
    slightly with depth and has soft lateral edges; very narrow shadows are also fainter.
    """
    yy, xx = ctx.grid()
    n = int(rng.integers(1, 3))
    qs, atts = [], []
    for _ in range(n):
        y0 = rng.uniform(0.05, 0.35) * ctx.h
        cx = rng.uniform(0.2, 0.8) * ctx.w
        depth = np.clip((yy - y0) / ctx.h, 0, None)
        atts.append(np.where(yy >= y0, 0.92 * (1 - np.exp(-depth / 0.06)), 0).astype(np.float32))
        qs.append((np.abs(xx - cx) / (ctx.w * (1 + 0.5 * depth))).astype(np.float32))

    def op(p: float) -> np.ndarray:
        m = np.ones((ctx.h, ctx.w), np.float32)
        for q, att in zip(qs, atts, strict=True):
            lateral = np.clip((np.float32(p) - q) / np.float32(0.15 * p + 1e-3), 0, 1) * np.float32(
                min(1, p / 0.03)
            )
            m *= 1 - att * lateral
        return ctx.x * m[:, :, None]

    return op


@register(
    "reverberation",
    family="ultrasound",
    param=ParamSpec(
        "amplitude",
        0.01,
        1.0,
        "echo strength",
        bound="first echo <= the interface brightness: every round trip loses energy",
    ),
)
def reverberation(ctx: Context, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Reverberation: equally spaced, decaying thin bright echo lines below a strong interface (lateral
    region). The pulse bounces between the probe and the interface at depth ``d``, so the echoes appear at
    ``2 d, 3 d, ...`` (spacing ``d``), each as thin as the interface echo (sigma 1 % of the height, at
    least 1 px) with dark gaps between them, weaker by a factor 0.85 per round trip."""
    _, xx = ctx.grid()
    yi = rng.uniform(0.08, 0.3) * ctx.h
    spacing = max(6.0, yi)
    c0 = rng.uniform(0.05, 0.35) * ctx.w
    c1 = c0 + rng.uniform(0.45, 0.9) * ctx.w
    sig = max(1.0, 0.01 * ctx.h)
    prof = np.zeros((ctx.h,), np.float32)
    rows = np.arange(ctx.h, dtype=np.float32)
    j = 1
    while yi + j * spacing < ctx.h + 3 * sig:
        prof += np.float32(0.85 ** (j - 1)) * np.exp(
            -((rows - (yi + j * spacing)) ** 2) / np.float32(2 * sig * sig)
        )
        j += 1
    edge = max(2.0, 0.08 * (c1 - c0))
    lateral = np.clip(np.minimum(xx[0] - c0, c1 - xx[0]) / edge, 0, 1).astype(np.float32)
    level = np.float32(0.25 + float(ctx.x.mean()))
    pattern = (prof[:, None] * lateral[None, :] * level)[:, :, None]

    def op(p: float) -> np.ndarray:
        return ctx.x + np.float32(p) * pattern

    return op
