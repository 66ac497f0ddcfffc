"""The calibration search over the shared SSIM curve of one (image, type) (see ``calibrate``).

A :class:`Curve` holds every evaluated point ``(t, param, SSIM, output)`` of one (image, type, seed): the
SSIM of the saved output is a deterministic function ``s(t)`` of the search position ``t`` in [0, 1]
(0 = mild end of the bounded parameter range). :func:`search_levels` evaluates both range ends (the
reachability certificate) and then runs one :class:`LevelSearch` per level on that shared curve, so every
point serves all levels. A level's search moves through named :class:`State` s:

- ``DONE``: an evaluated point lies in the band (the one closest to the band centre is taken);
- ``BISECTING``: two adjacent evaluated points straddle the band (one too mild, one too strong):
  regula falsi on ``g = log(1 - s)`` (nearly linear in ``t``), the first step from the type's prior
  position (``priors.json``) when it lies inside that bracket, bisection after two steps on the same
  side; a bracket between adjacent integers, or narrower than 2e-3 in ``t`` (a jump over the band, e.g.
  JPEG quantisation steps), is dropped;
- ``BRACKETING``: every point lies on one side of the band: the grid 1/2, 1/4, 3/4 is tried (a
  non-monotone ``s(t)`` may dip into the band between the ends);
- ``UNREACHABLE``: no candidate is left (no bracket, grid exhausted): the band is reported unreachable,
  with the reason (too mild or too strong over the whole range, or a jump over the band);
- ``EXHAUSTED``: the level's evaluation budget is spent.

The search path depends only on the image, type, seed, settings and the requested levels.
"""

from __future__ import annotations

import enum
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import numpy as np

from medfm_robust.errors import ConfigError
from medfm_robust.perturb._common import Context
from medfm_robust.perturb.registry import ParamSpec

DEFAULT_BANDS: tuple[tuple[float, float], ...] = (
    (0.90, 0.98),
    (0.80, 0.90),
    (0.70, 0.80),
    (0.60, 0.70),
    (0.50, 0.60),
)
DEFAULT_MAX_EVALS = 14
_DEFAULT_PRIOR = (0.25, 0.4, 0.5, 0.6, 0.7)
_GRID = (0.5, 0.25, 0.75)  # scanned when every point lies on one side of the band (non-monotone s(t))


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


@dataclass
class Curve:
    """The shared state of one (image, type, seed): the prepared ``op``, the dither of the saved image
    (see ``Context.quantise``) and every evaluated point."""

    ctx: Context
    pspec: ParamSpec
    op: Callable[[float], np.ndarray]
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

    def scores(self) -> list[float]:
        """SSIM of every evaluated point."""
        return [s for s, _ in self.memo.values()]

    def closest(self, lo: float, hi: float) -> float:
        """The evaluated parameter whose SSIM is closest to the band (then to its centre)."""
        m = self.memo
        return min(m, key=lambda q: (_band_distance(m[q][0], lo, hi), abs(m[q][0] - (lo + hi) / 2), q))


def _band_distance(s: float, lo: float, hi: float) -> float:
    return 0.0 if lo <= s <= hi else min(abs(s - lo), abs(s - hi))


class State(enum.Enum):
    """Where one level's search stands (see the module docstring)."""

    BRACKETING = "bracketing"
    BISECTING = "bisecting"
    DONE = "done"
    UNREACHABLE = "unreachable"
    EXHAUSTED = "exhausted"


class LevelSearch:
    """The search for one level's band on a shared :class:`Curve`.

    :meth:`run` steps until the state is final (``DONE``, ``UNREACHABLE`` or ``EXHAUSTED``); then
    ``param`` is the chosen parameter and ``reason`` says why it is not in band (empty when it is).
    """

    def __init__(
        self, curve: Curve, level: int, bands: Sequence[tuple[float, float]], max_evals: int, prior: float
    ) -> None:
        self.curve, self.level, self.bands, self.max_evals, self.prior = curve, level, bands, max_evals, prior
        self.lo, self.hi = bands[level - 1]
        self.centre = (self.lo + self.hi) / 2
        self.target = _g(self.centre)
        self.dead: set[tuple[float, float]] = set()  # brackets that cannot be narrowed further
        self.history: list[bool] = []  # side of each new point of this level (True = too mild)
        self.state = State.BRACKETING
        self.param = math.nan
        self.reason = ""

    def run(self) -> LevelSearch:
        """Step to a final state; returns self."""
        while self.step():
            pass
        return self

    def step(self) -> bool:
        """Choose the state from the evaluated points and, unless it is final, evaluate the next point.
        Returns whether the search goes on."""
        pts = self.curve.points()
        hits = [(abs(s - self.centre), t, p) for t, p, s in pts if in_band(s, self.level, self.bands)]
        if hits:
            return self._finish(State.DONE, min(hits)[2], "")
        if len(self.history) >= self.max_evals:
            reason = f"no parameter in band after {self.max_evals} evaluations"
            return self._finish(State.EXHAUSTED, self.curve.closest(self.lo, self.hi), reason)
        nxt, straddles = self._bracket_step(pts)
        self.state = State.BISECTING if straddles else State.BRACKETING
        if nxt is None and not straddles:
            pspec, memo = self.curve.pspec, self.curve.memo
            nxt = next((t for t in _GRID if pspec.value(t) not in memo), None)
        if nxt is None:
            return self._finish(State.UNREACHABLE, self.curve.closest(self.lo, self.hi), self._unreachable())
        _, s = self.curve.evaluate(nxt)
        self.history.append(s >= self.hi)
        return True

    def _finish(self, state: State, param: float, reason: str) -> bool:
        self.state, self.param, self.reason = state, param, reason
        return False

    def _bracket_step(self, pts: list[tuple[float, float, float]]) -> tuple[float | None, bool]:
        """(next position inside the first live bracket straddling the band or None, whether any
        bracket straddles it); brackets that cannot be narrowed are marked dead."""
        pspec, memo = self.curve.pspec, self.curve.memo
        straddles = False
        for (ta, pa, sa), (tb, pb, sb) in itertools.pairwise(pts):
            if (sa >= self.hi) == (sb >= self.hi):
                continue
            straddles = True
            if (ta, tb) in self.dead:
                continue
            if abs(pa - pb) <= (1.0 if pspec.integer else 0.0) or tb - ta < 2e-3:
                self.dead.add((ta, tb))
                continue
            nt = ta + self._fraction(ta, tb, sa, sb) * (tb - ta)
            if pspec.value(nt) in memo:
                nt = ta + 0.5 * (tb - ta)
                if pspec.value(nt) in memo:
                    self.dead.add((ta, tb))
                    continue
            return nt, True
        return None, straddles

    def _fraction(self, ta: float, tb: float, sa: float, sb: float) -> float:
        """Where in the bracket ``[ta, tb]`` to evaluate next, as a fraction in [0.1, 0.9]: the prior on
        the first step, bisection after two steps on one side, else regula falsi on ``g``."""
        ga, gb = _g(sa), _g(sb)
        if not self.history and ta < self.prior < tb:
            frac = (self.prior - ta) / (tb - ta)
        elif len(self.history) >= 2 and self.history[-1] == self.history[-2]:
            frac = 0.5
        else:
            frac = (self.target - ga) / (gb - ga) if gb != ga else 0.5
        return min(max(frac, 0.1), 0.9)

    def _unreachable(self) -> str:
        """Why the band was missed, naming the parameter values and SSIMs concerned."""
        pspec = self.curve.pspec
        scores = self.curve.scores()
        a, b = pspec.range
        whole = f"the whole bounded {pspec.name} range [{a:g}, {b:g}]"
        if min(scores) >= self.hi:
            return f"unreachable: too mild over {whole} (lowest SSIM {min(scores):.3f})"
        if max(scores) < self.lo:
            return f"unreachable: too strong over {whole} (highest SSIM {max(scores):.3f})"
        if self.dead:
            ta, tb = min(self.dead)
            pa, pb = sorted((pspec.value(ta), pspec.value(tb)))
            if pspec.integer:
                return f"band lies between adjacent {pspec.name} values {pa:g} and {pb:g}"
            return f"SSIM jumps over the band between {pspec.name} {pa:.4g} and {pb:.4g} (discontinuous)"
        return "band not reached on the search grid"


def search_levels(
    curve: Curve, name: str, levels: Sequence[int], bands: Sequence[tuple[float, float]], max_evals: int
) -> dict[int, tuple[float, str, int]]:
    """Evaluate both range ends, then search each level of ``levels`` (ascending) on the shared curve.

    Returns ``level -> (parameter, reason if not in band, new evaluations)``; the two ends count for the
    first level searched. ``max_evals``: new evaluations allowed per level.
    """
    curve.evaluate(0.0)
    curve.evaluate(1.0)
    priors = prior_positions(name)
    found: dict[int, tuple[float, str, int]] = {}
    for level in sorted(set(levels)):
        before = len(curve.memo)
        search = LevelSearch(curve, level, bands, max_evals, priors[level - 1]).run()
        found[level] = (search.param, search.reason, len(curve.memo) - before + (2 if not found else 0))
    return found
