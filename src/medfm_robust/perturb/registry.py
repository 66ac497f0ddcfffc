"""The perturbation registry: 40 named effects, each with its one calibrated severity parameter.

A perturbation is registered with :func:`register` on a *prepare* function ``prepare(ctx, rng) -> op``:
``prepare`` draws every random quantity (noise fields, spot positions, angles...) from ``rng`` once, so the
returned ``op(p)`` is a deterministic function of the parameter ``p`` alone (the calibration searches over
it). ``op(p)`` returns the perturbed image as float32 ``H x W x C`` in units of the dtype range (it is
clipped to [0, 1] and quantised by the engine). For label-moving types ``op`` also has
``move_mask(p, mask) -> mask`` applying the same geometric transform to an ``H x W`` uint8 mask
(nearest neighbour, 0 outside).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from medfm_robust.errors import ConfigError

MODALITIES: tuple[str, ...] = (
    "dermoscopy",
    "mri",
    "ct",
    "xray",
    "ultrasound",
    "endoscopy",
    "fundus",
    "oct",
    "pathology",
    "angiography",
)

# Perturbation families -> the modalities they apply to (fundus and oct share one family).
FAMILIES: dict[str, tuple[str, ...]] = {
    "dermoscopy": ("dermoscopy",),
    "mri": ("mri",),
    "ultrasound": ("ultrasound",),
    "endoscopy": ("endoscopy",),
    "fundus_oct": ("fundus", "oct"),
    "pathology": ("pathology",),
    "ct": ("ct",),
    "xray": ("xray",),
    "angiography": ("angiography",),
}


@dataclass(frozen=True)
class ParamSpec:
    """The one severity parameter of a perturbation.

    ``mild``/``strong`` are the ends of the searched range (``direction`` says whether stronger means a
    larger or a smaller value). The range is the type's physically plausible one; ``bound`` states, in one
    line, why the strong end is where it is, with its source or measured reason (it is appended to the
    type's docstring).
    Bands the bounded range cannot reach are reported unreachable, never forced. The search runs over
    ``t`` in [0, 1] (0 = mild end), mapped linearly or logarithmically in the distance from ``pivot``
    (e.g. JPEG quality is log-spaced in 100 - Q).
    """

    name: str
    mild: float
    strong: float
    unit: str = ""
    scale: Literal["log", "linear"] = "log"
    pivot: float = 0.0
    integer: bool = False
    bound: str = ""

    @property
    def direction(self) -> str:
        """``increasing`` if a larger value is stronger, else ``decreasing``."""
        return "increasing" if self.strong > self.mild else "decreasing"

    @property
    def range(self) -> tuple[float, float]:
        """(min, max) of the searched range."""
        return (min(self.mild, self.strong), max(self.mild, self.strong))

    def with_range(self, lo: float, hi: float) -> ParamSpec:
        """A copy searching ``[lo, hi]`` (same direction); raises ``ConfigError`` on a bad range."""
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise ConfigError(
                f"param_range for '{self.name}' must be [min, max] with min < max, got {[lo, hi]}"
            )
        if self.scale == "log" and (lo - self.pivot) * (hi - self.pivot) <= 0:
            raise ConfigError(
                f"param_range for '{self.name}' must lie strictly on one side of {self.pivot}, got {[lo, hi]}"
            )
        mild, strong = (lo, hi) if self.direction == "increasing" else (hi, lo)
        return ParamSpec(self.name, mild, strong, self.unit, self.scale, self.pivot, self.integer, self.bound)

    def value(self, t: float) -> float:
        """Parameter at search position ``t`` in [0, 1] (rounded for integer parameters)."""
        t = min(max(float(t), 0.0), 1.0)
        if self.scale == "linear":
            v = self.mild + t * (self.strong - self.mild)
        else:
            dm, ds = self.mild - self.pivot, self.strong - self.pivot
            v = self.pivot + math.copysign(abs(dm) * (abs(ds) / abs(dm)) ** t, dm)
        if self.integer:
            v = float(round(v))
        return float(v)

    def position(self, value: float) -> float:
        """Inverse of :meth:`value` (clipped to [0, 1])."""
        if self.scale == "linear":
            t = (value - self.mild) / (self.strong - self.mild)
        else:
            dm, ds, dv = abs(self.mild - self.pivot), abs(self.strong - self.pivot), abs(value - self.pivot)
            t = math.log(max(dv, 1e-300) / dm) / math.log(ds / dm)
        return min(max(t, 0.0), 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly metadata."""
        return {
            "name": self.name,
            "range": list(self.range),
            "direction": self.direction,
            "integer": self.integer,
            "scale": self.scale,
            "unit": self.unit,
            "bound": self.bound,
        }


Prepare = Callable[..., Any]


@dataclass(frozen=True)
class PerturbationSpec:
    """Metadata and implementation of one registered perturbation."""

    name: str
    category: Literal["base", "medical"]
    family: str
    modalities: tuple[str, ...]
    param: ParamSpec
    moves_labels: bool
    description: str
    prepare: Prepare = field(repr=False, compare=False)
    options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # name -> choices, default first

    def check_options(self, options: Mapping[str, Any] | None) -> dict[str, str]:
        """The type's options with defaults filled in; an unknown option or value raises ``ConfigError``."""
        given = dict(options or {})
        for k, v in given.items():
            if k not in self.options:
                known = ", ".join(self.options) or "none"
                raise ConfigError(f"perturbation '{self.name}' has no option '{k}' (options: {known})")
            if v not in self.options[k]:
                raise ConfigError(
                    f"option '{k}' of perturbation '{self.name}' must be one of "
                    f"{list(self.options[k])}, got {v!r}"
                )
        return {k: str(given.get(k, choices[0])) for k, choices in self.options.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly metadata (what ``medfm-robust perturbations --json`` prints)."""
        return {
            "name": self.name,
            "category": self.category,
            "family": self.family,
            "modalities": list(self.modalities),
            "param": self.param.to_dict(),
            "moves_labels": self.moves_labels,
            "description": self.description,
            "options": {k: list(v) for k, v in self.options.items()},
        }


_REGISTRY: dict[str, PerturbationSpec] = {}


def register(
    name: str,
    *,
    family: str,
    param: ParamSpec,
    moves_labels: bool = False,
    options: Mapping[str, tuple[str, ...]] | None = None,
) -> Callable[[Prepare], Prepare]:
    """Decorator registering ``prepare(ctx, rng, **options) -> op`` as ``name``; its docstring's first
    paragraph is the description. ``options``: option name -> allowed values (the first is the default),
    passed to ``prepare`` as keyword arguments."""
    if family != "base" and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}")

    def deco(fn: Prepare) -> Prepare:
        if name in _REGISTRY:
            raise ValueError(f"perturbation {name!r} registered twice")
        doc = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        if param.bound:  # the bound's reason is part of the docstring (help(), the API docs)
            fn.__doc__ = f"{(fn.__doc__ or '').rstrip()}\n\nBound ({param.name}, strong end): {param.bound}."
        _REGISTRY[name] = PerturbationSpec(
            name=name,
            category="base" if family == "base" else "medical",
            family=family,
            modalities=MODALITIES if family == "base" else FAMILIES[family],
            param=param,
            moves_labels=moves_labels,
            description=doc,
            prepare=fn,
            options=dict(options or {}),
        )
        return fn

    return deco


class _Registry(Mapping[str, PerturbationSpec]):
    """Read-only name -> :class:`PerturbationSpec` mapping (base types first, then medical by family)."""

    def __getitem__(self, key: str) -> PerturbationSpec:
        return _REGISTRY[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return f"REGISTRY({list(_REGISTRY)})"


REGISTRY: Mapping[str, PerturbationSpec] = _Registry()


def get_spec(name: str) -> PerturbationSpec:
    """The spec of ``name``; an unknown name raises ``ConfigError`` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown perturbation type '{name}' (known: {', '.join(sorted(_REGISTRY))})"
        ) from None


def applicable_types(
    modality: str, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None
) -> list[str]:
    """Types applicable to ``modality``: every base type plus its family's, in registry order.

    ``include`` (if non-empty) keeps only those names, ``exclude`` drops names; unknown names in either
    raise ``ConfigError``. ``fundus`` and ``oct`` share the fundus/OCT family.
    """
    if modality not in MODALITIES:
        raise ConfigError(f"unknown modality '{modality}' (known: {', '.join(MODALITIES)})")
    inc = list(include or [])
    exc = list(exclude or [])
    for n in inc + exc:
        get_spec(n)
    names = [n for n, s in _REGISTRY.items() if modality in s.modalities]
    if inc:
        names = [n for n in names if n in inc]
    return [n for n in names if n not in exc]


def rng_array(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 draws (helper so every module draws noise the same way)."""
    return rng.standard_normal(shape, dtype=np.float32)
