"""Per-image SSIM calibration: find the parameter whose *saved* output lands in each level's SSIM band.

**Nested levels.** For one (image, type) the random stream is fixed once from ``seed`` (which does not
depend on the level): ``prepare(ctx, rng)`` draws the layout (noise field, hairs, spots, streaks...) and a
uniform field for dithered rounding of the saved image (see ``Context.quantise``). All five levels use
that one layout and differ only in the severity parameter, so L1..L5 of an image are the same artefact at
growing strength, and the SSIM of the saved output is a deterministic function ``s(t)`` of the search
position ``t`` in [0, 1] (0 = mild end of the type's *bounded* parameter range; see
:class:`~medfm_robust.perturb.registry.ParamSpec`).

**One shared search** (:func:`calibrate_levels`): every evaluated point of ``s(t)`` is kept and serves all
levels (:mod:`medfm_robust.perturb.search`: the search, a small state machine per level). Both range
ends are evaluated first: they certify the reachable SSIM (``ssim_min_reachable``,
``ssim_max_reachable``: the lowest and highest SSIM of any evaluated parameter, ends included), so a
band outside that interval is reported as unreachable, never forced. Then, level by level, an already
evaluated in-band point is taken, else the band is bracketed and narrowed by regula falsi, or, with
every point on one side of the band, a coarse grid is scanned before the band is reported unreachable.

The search path depends only on the image, type, seed, settings and the requested levels, never on
other images, so results are byte-identical in any order, sharding or worker count.
:func:`apply` reproduces any saved output from its ``param`` and ``seed`` exactly (same layout, dither,
quantisation and moved mask), so a shard row is regenerated, and a type swept, without a search.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medfm_robust.errors import ConfigError, DataError
from medfm_robust.perturb._common import Context
from medfm_robust.perturb.registry import ParamSpec, PerturbationSpec, get_spec
from medfm_robust.perturb.search import DEFAULT_MAX_EVALS, Curve, check_bands, in_band, search_levels


@dataclass
class CalibrationResult:
    """Outcome of one calibration.

    ``image``: exactly what is saved (same shape and dtype as the input); ``mask``: the moved mask
    (``H x W`` uint8 {0, 255}) for label-moving types when a mask was given, else the input mask or None;
    ``ssim`` of ``image`` against the input; ``param`` the parameter used; ``in_band`` and ``reason``
    (empty when in band); ``band`` (lo, hi); ``n_evals`` perturbation + SSIM evaluations spent;
    ``ssim_min_reachable`` / ``ssim_max_reachable``: lowest / highest SSIM of any parameter evaluated for
    this (image, type), both ends of the bounded range included (the reachability certificate).
    """

    name: str
    level: int
    image: np.ndarray
    mask: np.ndarray | None
    ssim: float
    param: float
    in_band: bool
    reason: str
    band: tuple[float, float]
    seed: int
    n_evals: int
    moves_labels: bool = False
    ssim_min_reachable: float = float("nan")
    ssim_max_reachable: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (no arrays)."""
        return {
            "type": self.name,
            "level": self.level,
            "ssim": round(self.ssim, 6),
            "param": self.param,
            "in_band": self.in_band,
            "reason": self.reason,
            "band": list(self.band),
            "seed": self.seed,
            "n_evals": self.n_evals,
            "moves_labels": self.moves_labels,
            "ssim_min_reachable": round(self.ssim_min_reachable, 6),
            "ssim_max_reachable": round(self.ssim_max_reachable, 6),
        }


def _check_level(level: int) -> int:
    if isinstance(level, bool) or int(level) != level or not 1 <= int(level) <= 5:
        raise ConfigError(f"level must be an integer in 1..5, got {level!r}")
    return int(level)


def check_mask(mask: np.ndarray | None, image: np.ndarray, source: str = "mask") -> np.ndarray | None:
    """``H x W`` mask of the image's size, as uint8 {0, 255}; None passes through."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != image.shape[:2]:
        raise DataError(
            f"{source}: mask is {m.shape[1]}x{m.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}"
        )
    return np.where(m > 0, 255, 0).astype(np.uint8)


def _prepare(
    ctx: Context,
    name: str,
    seed: int,
    param_range: Sequence[float] | None,
    options: Mapping[str, str] | None = None,
) -> tuple[PerturbationSpec, ParamSpec, Any, np.ndarray]:
    """(spec, bounded param spec, op, dither) of one (image, type, seed): the random stream's one use."""
    spec = get_spec(name)
    opts = spec.check_options(options)
    pspec = spec.param if param_range is None else spec.param.with_range(*map(float, param_range))
    rng = np.random.default_rng(int(seed))
    op = spec.prepare(ctx, rng, **opts)
    dither = _dither(rng, ctx.x.shape)  # stochastic rounding of the saved image
    return spec, pspec, op, dither


def _context(
    image: np.ndarray | Context, data_range: float | None, value_range: Sequence[float] | None = None
) -> Context:
    if isinstance(image, Context):
        return image
    return Context(image, data_range=data_range, value_range=value_range)


def _moved_mask(spec: PerturbationSpec, op: Any, p: float, mask_u8: np.ndarray | None) -> np.ndarray | None:
    if spec.moves_labels and mask_u8 is not None:
        return np.where(op.move_mask(p, mask_u8) > 127, 255, 0).astype(np.uint8)
    return mask_u8


def apply(
    image: np.ndarray | Context,
    name: str,
    param: float,
    *,
    seed: int,
    mask: np.ndarray | None = None,
    data_range: float | None = None,
    options: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Perturbation ``name`` at parameter ``param`` with random stream ``seed``: exactly what
    :func:`calibrate_levels` saves when it picks ``param`` (same layout, dithered rounding, dtype, shape).

    ``image``: ``H x W`` or ``H x W x 3`` uint8/uint16 (or a :class:`Context`); ``mask``: optional
    ``H x W`` (> 0 = foreground); ``data_range``: stored range black..white (see :class:`Context`);
    ``options``: the type's registry options (e.g. ``{"space": "hsv"}`` for stain_variation). Returns
    ``(output, mask)``: the output in the input's shape and dtype, and the mask as ``H x W`` uint8
    {0, 255} moved with the image for label-moving types (None when no mask was given). Any finite
    ``param`` is accepted (sweeps may go past the bounded range).
    """
    if not math.isfinite(float(param)):
        raise ConfigError(f"param for '{name}' must be a finite number, got {param!r}")
    ctx = _context(image, data_range)
    mask_u8 = check_mask(mask, ctx.image)
    spec, _, op, dither = _prepare(ctx, name, seed, None, options)
    out = ctx.quantise(op(float(param)), dither)
    return out, _moved_mask(spec, op, float(param), mask_u8)


def calibrate_levels(
    image: np.ndarray | Context,
    name: str,
    levels: Sequence[int] = (1, 2, 3, 4, 5),
    *,
    seed: int,
    mask: np.ndarray | None = None,
    bands: Sequence[Sequence[float]] | None = None,
    param_range: Sequence[float] | None = None,
    max_evals: int = DEFAULT_MAX_EVALS,
    data_range: float | None = None,
    options: Mapping[str, str] | None = None,
) -> list[CalibrationResult]:
    """Calibrate perturbation ``name`` at every level of ``levels`` (1..5) on one image, from one shared
    search over one random layout (``seed``; see the module docstring).

    ``image``: ``H x W`` or ``H x W x 3`` uint8/uint16 (or a :class:`Context` built from it, to share
    per-image caches across types); ``mask``: optional ``H x W`` (> 0 = foreground), moved with the image
    for label-moving types. ``bands``: 5 ``[lo, hi]`` SSIM bands; ``param_range``: optional ``[min, max]``
    overriding the type's bounded range; ``max_evals``: new evaluations allowed per level;
    ``data_range``: stored range black..white (see :class:`Context`); ``options``: the type's registry
    options. Returns one :class:`CalibrationResult` per level, in the order of ``levels``.
    """
    levels_t = [_check_level(v) for v in levels]
    if not levels_t:
        raise ConfigError("levels must name at least one level in 1..5")
    bands_t = check_bands(bands)
    if max_evals < 2:
        raise ConfigError(f"max_evals must be at least 2, got {max_evals}")
    ctx = _context(image, data_range)
    mask_u8 = check_mask(mask, ctx.image)
    spec, pspec, op, dither = _prepare(ctx, name, seed, param_range, options)
    curve = Curve(ctx, pspec, op, dither)
    found = search_levels(curve, name, levels_t, bands_t, max_evals)
    scores = curve.scores()
    s_min, s_max = float(min(scores)), float(max(scores))
    results = []
    for level in levels_t:
        p, reason, n = found[level]
        s_best, out = curve.memo[p]
        ok = in_band(s_best, level, bands_t)
        results.append(
            CalibrationResult(
                name=name,
                level=level,
                image=out,
                mask=_moved_mask(spec, op, p, mask_u8),
                ssim=float(s_best),
                param=float(p),
                in_band=ok,
                reason="" if ok else reason,
                band=bands_t[level - 1],
                seed=int(seed),
                n_evals=n,
                moves_labels=spec.moves_labels,
                ssim_min_reachable=s_min,
                ssim_max_reachable=s_max,
            )
        )
    return results


def calibrate(
    image: np.ndarray | Context, name: str, level: int, *, seed: int, **settings: Any
) -> CalibrationResult:
    """Calibrate one level: :func:`calibrate_levels` with ``levels=(level,)``; ``settings`` are its
    keyword arguments (``mask``, ``bands``, ``param_range``, ``max_evals``, ``data_range``, ``options``)."""
    return calibrate_levels(image, name, (level,), seed=seed, **settings)[0]


def _dither(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform (0, 1) float32 offsets on a 1/256 grid for stochastic rounding (random bytes: 2.5x cheaper
    than float draws, and rounding probabilities need no finer resolution)."""
    b = np.frombuffer(rng.bytes(math.prod(shape)), np.uint8).reshape(shape)
    return (b.astype(np.float32) + np.float32(0.5)) * np.float32(1 / 256)
