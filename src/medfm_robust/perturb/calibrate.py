"""Per-image SSIM calibration: find the parameter whose *saved* output lands in the level's SSIM band.

For one (image, type, level) the random stream is fixed first (``prepare(ctx, rng)`` and a uniform field
for dithered rounding of the saved image, see ``Context.quantise``), so the SSIM of the quantised output
is a deterministic function ``s(t)`` of the search position ``t`` in [0, 1] (0 = mild end
of the parameter range; see :class:`~medfm_robust.perturb.registry.ParamSpec`). The search works on
``g = log(1 - s)``, which is close to linear in ``t`` for most types:

1. start at the type's prior position for this level (``priors.json``: the median calibrated position
   over a fixed set of generated images, refitted with ``benchmarks/perturb_throughput.py --fit-priors``);
2. if that misses, shift the prior curve through the observed point and try its prediction;
3. then secant steps while all points lie on one side of the band (stepping at least 0.08 and up to the
   range end), and regula falsi with an Illinois/bisection safeguard once the band is bracketed.

This copes with integer parameters (the search is memoised on the rounded value; a band that falls between
two adjacent integers is reported) and with non-monotone ``s(t)`` (a bracket is any pair of too-mild and
too-strong points; continuity gives a crossing between them). The search path depends only on the image,
type, level, seed and settings, never on other images, so results are byte-identical in any order,
sharding or worker count. The returned output is the in-band one; if the band cannot be reached, the one
closest to the band, with ``in_band = False`` and a reason.

Why no running median of the dataset as the warm start: a running median depends on the order in which
images are processed, so the search path, and with it the chosen in-band output, would change with file
order or sharding. The fixed prior is order-independent information playing the same role (the typical
parameter of the type at that level), and each level's search is independent, so
``calibrate(image, name, level, seed=row.seed)`` regenerates any shard row exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from medfm_robust.errors import ConfigError, DataError
from medfm_robust.perturb._common import Context
from medfm_robust.perturb.registry import ParamSpec, get_spec

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
    (empty when in band); ``band`` (lo, hi); ``n_evals`` perturbation + SSIM evaluations spent.
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
) -> CalibrationResult:
    """Calibrate perturbation ``name`` at ``level`` (1..5) on ``image`` with random stream ``seed``.

    ``image``: ``H x W`` or ``H x W x 3`` uint8/uint16 (or a :class:`Context` built from it, to share
    per-image caches across calls); ``mask``: optional ``H x W`` (any dtype, > 0 = foreground), moved with
    the image for label-moving types. ``bands``: 5 ``[lo, hi]`` SSIM bands; ``param_range``: optional
    ``[min, max]`` overriding the type's searched range. Returns a :class:`CalibrationResult`.
    """
    spec = get_spec(name)
    level = _check_level(level)
    bands_t = check_bands(bands)
    if max_evals < 2:
        raise ConfigError(f"max_evals must be at least 2, got {max_evals}")
    ctx = image if isinstance(image, Context) else Context(image)
    mask_u8 = check_mask(mask, ctx.image)
    pspec = spec.param if param_range is None else spec.param.with_range(*map(float, param_range))
    rng = np.random.default_rng(int(seed))
    op = spec.prepare(ctx, rng)
    dither = _dither(rng, ctx.x.shape)  # stochastic rounding of the saved image
    lo, hi = bands_t[level - 1]
    target = _g((lo + hi) / 2)

    memo: dict[float, tuple[float, np.ndarray]] = {}
    points: list[tuple[float, float]] = []  # (t, g)

    def evaluate(t: float) -> tuple[float, float, bool]:
        p = pspec.value(t)
        if p not in memo:
            out = ctx.quantise(op(p), dither)
            memo[p] = (ctx.ref.score(out.reshape(ctx.image.shape)), out)
        s = memo[p][0]
        points.append((t, _g(s)))
        return p, s, in_band(s, level, bands_t)

    t = prior_positions(name)[level - 1]
    found: float | None = None
    mild: tuple[float, float] | None = None  # (t, g) with s above the band
    strong: tuple[float, float] | None = None  # (t, g) with s below the band
    reason = ""
    n_iter = 0
    scanning = False
    jump_scan = False
    first_bracket: tuple[float, float] | None = None
    while n_iter < max_evals:
        n_iter += 1
        p, s, ok = evaluate(t)
        if ok:
            found = p
            break
        gt = _g(s)
        if s >= hi:
            mild = (t, gt)
        else:
            strong = (t, gt)
        if mild is not None and strong is not None and first_bracket is None:
            first_bracket = (mild[0], strong[0])
        if jump_scan:
            nxt = _grid_position(first_bracket, pspec, memo)  # type: ignore[arg-type]
        else:
            nxt = (
                None if scanning else _next_position(t, gt, target, mild, strong, points, name, level, pspec)
            )
        if nxt is None and (mild is None or strong is None):
            scanning = True  # a range end reached without crossing: scan a coarse grid (non-monotone s(t))
            nxt = _scan_position(mild, strong, pspec, memo)
        elif scanning:
            scanning = False  # the scan found the other side: bracket from here
            nxt = _next_position(t, gt, target, mild, strong, points, name, level, pspec)
        elif nxt is None and not jump_scan and not pspec.integer and first_bracket is not None:
            # the bracket collapsed onto a jump over the band (e.g. JPEG's quantisation steps): try an
            # evenly spaced grid inside the first bracket for an in-band point
            jump_scan = True
            nxt = _grid_position(first_bracket, pspec, memo)
        if nxt is None:
            reason = _unreachable_reason(mild, strong, pspec, memo)
            break
        t = nxt
    else:
        reason = f"no parameter in band after {max_evals} evaluations"

    if found is None:
        found = min(memo, key=lambda q: (_band_distance(memo[q][0], lo, hi), abs(memo[q][0] - (lo + hi) / 2)))
        if not reason:
            reason = "band not reached"
    s_best, out = memo[found]
    moved = mask_u8
    if spec.moves_labels and mask_u8 is not None:
        moved = np.where(op.move_mask(found, mask_u8) > 127, 255, 0).astype(np.uint8)
    return CalibrationResult(
        name=name,
        level=level,
        image=out,
        mask=moved,
        ssim=float(s_best),
        param=float(found),
        in_band=in_band(s_best, level, bands_t),
        reason="" if in_band(s_best, level, bands_t) else reason,
        band=(lo, hi),
        seed=int(seed),
        n_evals=len(memo),
        moves_labels=spec.moves_labels,
    )


def _dither(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform (0, 1) float32 offsets on a 1/256 grid for stochastic rounding (random bytes: 2.5x cheaper
    than float draws, and rounding probabilities need no finer resolution)."""
    b = np.frombuffer(rng.bytes(math.prod(shape)), np.uint8).reshape(shape)
    return (b.astype(np.float32) + np.float32(0.5)) * np.float32(1 / 256)


def _band_distance(s: float, lo: float, hi: float) -> float:
    return 0.0 if lo <= s <= hi else min(abs(s - lo), abs(s - hi))


def _next_position(
    t: float,
    gt: float,
    target: float,
    mild: tuple[float, float] | None,
    strong: tuple[float, float] | None,
    points: list[tuple[float, float]],
    name: str,
    level: int,
    pspec: ParamSpec,
) -> float | None:
    """The next search position, or None when the band is unreachable / bracketed between integers."""
    if mild is not None and strong is not None:
        (ta, ga), (tb, gb) = mild, strong
        if abs(pspec.value(ta) - pspec.value(tb)) <= (1.0 if pspec.integer else 0.0) or abs(ta - tb) < 2e-3:
            return None
        frac = (target - ga) / (gb - ga) if gb != ga else 0.5
        frac = min(max(frac, 0.1), 0.9)
        # Illinois-like safeguard: after two steps on the same side, bisect.
        if len(points) >= 3 and _same_side(points[-3:], target):
            frac = 0.5
        nt = ta + frac * (tb - ta)
        if pspec.integer and pspec.value(nt) in (pspec.value(ta), pspec.value(tb)):
            nt = ta + 0.5 * (tb - ta)
            if pspec.value(nt) in (pspec.value(ta), pspec.value(tb)):
                return None
        return nt
    going_up = strong is None  # too mild so far -> stronger (larger t)
    if going_up and t >= 1.0:
        return None
    if not going_up and t <= 0.0:
        return None
    if len(points) == 1:
        prior = prior_positions(name)
        nt = _shift_prior(t, gt, target, prior, level)
    else:
        (t1, g1), (t2, g2) = points[-2], points[-1]
        slope = (g2 - g1) / (t2 - t1) if abs(t2 - t1) > 1e-9 else 0.0
        nt = t2 + (target - g2) / slope if slope > 0.05 else t2 + (0.3 if going_up else -0.3)
    step = nt - t
    step = min(max(step, 0.06), 0.6) if going_up else max(min(step, -0.06), -0.6)
    nt = min(max(t + step, 0.0), 1.0)
    if pspec.integer and pspec.value(nt) == pspec.value(t):
        nt = pspec.position(pspec.value(t) + (1 if (pspec.strong > pspec.mild) == going_up else -1))
    return nt


def _scan_position(
    mild: tuple[float, float] | None,
    strong: tuple[float, float] | None,
    pspec: ParamSpec,
    memo: dict[float, tuple[float, np.ndarray]],
) -> float | None:
    """When one range end is reached without crossing the band, the next untried point of a coarse grid
    (from that end inwards), so a non-monotone ``s(t)`` is still searched; None when the grid is exhausted."""
    grid = np.linspace(0.0, 1.0, 5)
    order = grid[::-1] if strong is None else grid
    for t in order:
        if pspec.value(float(t)) not in memo:
            return float(t)
    return None


def _grid_position(
    bracket: tuple[float, float], pspec: ParamSpec, memo: dict[float, tuple[float, np.ndarray]]
) -> float | None:
    """The next untried point of an 8-point grid strictly inside ``bracket``; None when all were tried."""
    a, b = sorted(bracket)
    for t in np.linspace(a, b, 10)[1:-1]:
        if pspec.value(float(t)) not in memo:
            return float(t)
    return None


def _same_side(pts: list[tuple[float, float]], target: float) -> bool:
    sides = [g > target for _, g in pts]
    return sides[-1] == sides[-2] == sides[-3]


def _shift_prior(t: float, gt: float, target: float, prior: Sequence[float], level: int) -> float:
    """Shift the prior curve (t_L at band centre g_L) horizontally through the observed point (t, gt)."""
    gs = [_g((lo + hi) / 2) for lo, hi in DEFAULT_BANDS]
    ts = list(prior)

    # piecewise-linear inverse of the prior curve, extrapolated at the ends
    def t_of(g: float) -> float:
        if g <= gs[0]:
            i = 0
        elif g >= gs[-1]:
            i = len(gs) - 2
        else:
            i = next(k for k in range(len(gs) - 1) if gs[k] <= g <= gs[k + 1])
        slope = (ts[i + 1] - ts[i]) / (gs[i + 1] - gs[i]) if gs[i + 1] != gs[i] else 0.0
        slope = max(slope, 0.02)
        return ts[i] + (g - gs[i]) * slope

    shift = t - t_of(gt)
    return t_of(target) + shift


def _unreachable_reason(
    mild: tuple[float, float] | None,
    strong: tuple[float, float] | None,
    pspec: ParamSpec,
    memo: dict[float, tuple[float, np.ndarray]],
) -> str:
    """Why the band was missed, naming the parameter values tried."""
    if mild is not None and strong is not None:
        a, b = sorted((pspec.value(mild[0]), pspec.value(strong[0])))
        if not pspec.integer:
            return f"SSIM jumps over the band between {pspec.name} {a:.4g} and {b:.4g} (discontinuous)"
        return f"band lies between adjacent {pspec.name} values {a:g} and {b:g}"
    lo, hi = pspec.range
    scores = [s for s, _ in memo.values()]
    if strong is None:
        return f"too mild over the whole {pspec.name} range [{lo:g}, {hi:g}] (lowest SSIM {min(scores):.3f})"
    return f"too strong over the whole {pspec.name} range [{lo:g}, {hi:g}] (highest SSIM {max(scores):.3f})"
