"""Per-image SSIM calibration: find the parameter whose *saved* output lands in each level's SSIM band.

**Nested levels.** For one (image, type) the random stream is fixed once from ``seed`` (which does not
depend on the level): ``prepare(ctx, rng)`` draws the layout (noise field, hairs, spots, streaks...) and a
uniform field for dithered rounding of the saved image (see ``Context.quantise``). All five levels use
that one layout and differ only in the severity parameter, so L1..L5 of an image are the same artefact at
growing strength, and the SSIM of the saved output is a deterministic function ``s(t)`` of the search
position ``t`` in [0, 1] (0 = mild end of the type's *bounded* parameter range; see
:class:`~medfm_robust.perturb.registry.ParamSpec`).

**One shared search** (:func:`calibrate_levels`): every evaluated point of ``s(t)`` is kept and serves all
levels. Both range ends are evaluated first: they certify the reachable SSIM (``ssim_min_reachable``,
``ssim_max_reachable``: the lowest and highest SSIM of any evaluated parameter, ends included), so a
band outside that interval is reported as unreachable, never forced. Then, level by level:

1. an already evaluated in-band point is taken (closest to the band centre);
2. else, between the two adjacent evaluated points that straddle the band (one too mild, one too
   strong), regula falsi on ``g = log(1 - s)`` (nearly linear in ``t``), the first step from the type's
   prior position (``priors.json``) when it lies inside that bracket, bisection after two steps on the
   same side; a bracket between adjacent integers, or narrower than 2e-3 in ``t`` (a jump over the band,
   e.g. JPEG quantisation steps), is dropped;
3. with every point on one side of the band, the grid 1/2, 1/4, 3/4 is tried (a non-monotone ``s(t)``
   may dip into the band between the ends); if it stays on one side the band is reported unreachable.

The search path depends only on the image, type, seed, settings and the requested levels, never on
other images, so results are byte-identical in any order, sharding or worker count.
:func:`apply` reproduces any saved output from its ``param`` and ``seed`` exactly (same layout, dither,
quantisation and moved mask), so a shard row is regenerated, and a type swept, without a search.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from medfm_robust.errors import ConfigError, DataError
from medfm_robust.perturb._common import Context
from medfm_robust.perturb.registry import ParamSpec, PerturbationSpec, get_spec

DEFAULT_BANDS: tuple[tuple[float, float], ...] = (
    (0.90, 0.98),
    (0.80, 0.90),
    (0.70, 0.80),
    (0.60, 0.70),
    (0.50, 0.60),
)
DEFAULT_MAX_EVALS = 14
_DEFAULT_PRIOR = (0.25, 0.4, 0.5, 0.6, 0.7)


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


def check_bands(bands: Sequence[Sequence[float]] | None) -> tuple[tuple[float, float], ...]:
    """Validate 5 bands ``[lo, hi]`` (lo < hi, within [-1, 1]); None gives the defaults."""
    if bands is None:
        return DEFAULT_BANDS
    out = []
    for i, b in enumerate(bands):
        if len(b) != 2 or not (-1 <= float(b[0]) < float(b[1]) <= 1):
            raise ConfigError(
                f"SSIM band for level {i + 1} must be [lo, hi] with -1 <= lo < hi <= 1, got {b}"
            )
        out.append((float(b[0]), float(b[1])))
    if len(out) != 5:
        raise ConfigError(f"expected 5 SSIM bands (levels 1..5), got {len(out)}")
    return tuple(out)


def in_band(s: float, level: int, bands: Sequence[tuple[float, float]]) -> bool:
    """``lo <= s < hi``; the upper end is inclusive when no other band starts there (L1's 0.98)."""
    lo, hi = bands[level - 1]
    closed = not any(abs(b[0] - hi) < 1e-12 for b in bands)
    return lo <= s < hi or (closed and s == hi)


@lru_cache(maxsize=1)
def _priors() -> dict[str, list[float]]:
    try:
        text = resources.files("medfm_robust.perturb").joinpath("priors.json").read_text()
    except FileNotFoundError:
        return {}
    return json.loads(text)


def prior_positions(name: str) -> tuple[float, ...]:
    """Prior search positions ``t`` for levels 1..5 (median over the generated fitting images)."""
    p = _priors().get(name)
    return tuple(float(v) for v in p) if p else _DEFAULT_PRIOR


def _g(s: float) -> float:
    return math.log(max(1.0 - s, 1e-4))


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


@dataclass
class _Curve:
    """The shared state of one (image, type, seed): the prepared op, dither and every evaluated point."""

    ctx: Context
    pspec: ParamSpec
    op: Any
    dither: np.ndarray
    memo: dict[float, tuple[float, np.ndarray]] = field(default_factory=dict)  # param -> (ssim, output)
    pos: dict[float, float] = field(default_factory=dict)  # param -> first search position t

    def evaluate(self, t: float) -> tuple[float, float]:
        """(param, SSIM) at search position ``t``; cached per (rounded) parameter value."""
        p = self.pspec.value(t)
        if p not in self.memo:
            out = self.ctx.quantise(self.op(p), self.dither)
            self.memo[p] = (self.ctx.ref.score(out.reshape(self.ctx.image.shape)), out)
            self.pos[p] = float(t)
        return p, self.memo[p][0]

    def points(self) -> list[tuple[float, float, float]]:
        """Evaluated ``(t, param, ssim)`` sorted by ``t``."""
        return sorted((self.pos[p], p, s) for p, (s, _) in self.memo.items())


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
    curve = _Curve(ctx, pspec, op, dither)
    curve.evaluate(0.0)
    curve.evaluate(1.0)
    found: dict[int, tuple[float, str, int]] = {}
    for level in sorted(set(levels_t)):
        before = len(curve.memo)
        p, reason = _search_level(curve, name, level, bands_t, max_evals)
        found[level] = (p, reason, len(curve.memo) - before + (2 if not found else 0))
    scores = [s for s, _ in curve.memo.values()]
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
    image: np.ndarray | Context,
    name: str,
    level: int,
    *,
    seed: int,
    mask: np.ndarray | None = None,
    bands: Sequence[Sequence[float]] | None = None,
    param_range: Sequence[float] | None = None,
    max_evals: int = DEFAULT_MAX_EVALS,
    data_range: float | None = None,
    options: Mapping[str, str] | None = None,
) -> CalibrationResult:
    """Calibrate one level: :func:`calibrate_levels` with ``levels=(level,)`` (same arguments)."""
    return calibrate_levels(
        image,
        name,
        (level,),
        seed=seed,
        mask=mask,
        bands=bands,
        param_range=param_range,
        max_evals=max_evals,
        data_range=data_range,
        options=options,
    )[0]


_GRID = (0.5, 0.25, 0.75)  # scanned when every point lies on one side of the band (non-monotone s(t))


def _search_level(
    curve: _Curve, name: str, level: int, bands: Sequence[tuple[float, float]], max_evals: int
) -> tuple[float, str]:
    """(chosen parameter, reason if not in band) for one level, adding points to the shared curve."""
    lo, hi = bands[level - 1]
    centre = (lo + hi) / 2
    target = _g(centre)
    pspec = curve.pspec
    dead: set[tuple[float, float]] = set()
    prior = prior_positions(name)[level - 1]
    history: list[bool] = []  # side of each new point of this level (True = too mild)
    new = 0
    while True:
        pts = curve.points()
        hits = [(abs(s - centre), t, p) for t, p, s in pts if in_band(s, level, bands)]
        if hits:
            return min(hits)[2], ""
        if new >= max_evals:
            return _closest(curve, lo, hi), f"no parameter in band after {max_evals} evaluations"
        nxt = None
        straddles = False
        for (ta, pa, sa), (tb, pb, sb) in itertools.pairwise(pts):
            if (sa >= hi) == (sb >= hi):
                continue
            straddles = True
            if (ta, tb) in dead:
                continue
            if abs(pa - pb) <= (1.0 if pspec.integer else 0.0) or tb - ta < 2e-3:
                dead.add((ta, tb))
                continue
            ga, gb = _g(sa), _g(sb)
            if not history and ta < prior < tb:
                frac = (prior - ta) / (tb - ta)
            elif len(history) >= 2 and history[-1] == history[-2]:
                frac = 0.5
            else:
                frac = (target - ga) / (gb - ga) if gb != ga else 0.5
            frac = min(max(frac, 0.1), 0.9)
            nt = ta + frac * (tb - ta)
            if pspec.value(nt) in curve.memo:
                nt = ta + 0.5 * (tb - ta)
                if pspec.value(nt) in curve.memo:
                    dead.add((ta, tb))
                    continue
            nxt = nt
            break
        if nxt is None and not straddles:
            nxt = next((t for t in _GRID if pspec.value(t) not in curve.memo), None)
        if nxt is None:
            return _closest(curve, lo, hi), _unreachable_reason(curve, lo, hi, dead)
        _, s = curve.evaluate(nxt)
        history.append(s >= hi)
        new += 1


def _closest(curve: _Curve, lo: float, hi: float) -> float:
    """The evaluated parameter whose SSIM is closest to the band (then to its centre)."""
    m = curve.memo
    return min(m, key=lambda q: (_band_distance(m[q][0], lo, hi), abs(m[q][0] - (lo + hi) / 2), q))


def _dither(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform (0, 1) float32 offsets on a 1/256 grid for stochastic rounding (random bytes: 2.5x cheaper
    than float draws, and rounding probabilities need no finer resolution)."""
    b = np.frombuffer(rng.bytes(math.prod(shape)), np.uint8).reshape(shape)
    return (b.astype(np.float32) + np.float32(0.5)) * np.float32(1 / 256)


def _band_distance(s: float, lo: float, hi: float) -> float:
    return 0.0 if lo <= s <= hi else min(abs(s - lo), abs(s - hi))


def _unreachable_reason(curve: _Curve, lo: float, hi: float, dead: set[tuple[float, float]]) -> str:
    """Why the band was missed, naming the parameter values and SSIMs concerned."""
    pspec = curve.pspec
    scores = [s for s, _ in curve.memo.values()]
    a, b = pspec.range
    whole = f"the whole bounded {pspec.name} range [{a:g}, {b:g}]"
    if min(scores) >= hi:
        return f"unreachable: too mild over {whole} (lowest SSIM {min(scores):.3f})"
    if max(scores) < lo:
        return f"unreachable: too strong over {whole} (highest SSIM {max(scores):.3f})"
    if dead:
        ta, tb = min(dead)
        pa, pb = sorted((pspec.value(ta), pspec.value(tb)))
        if pspec.integer:
            return f"band lies between adjacent {pspec.name} values {pa:g} and {pb:g}"
        return f"SSIM jumps over the band between {pspec.name} {pa:.4g} and {pb:.4g} (discontinuous)"
    return "band not reached on the search grid"
