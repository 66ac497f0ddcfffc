"""Intensity policy: how stored source intensities become the benchmark's images, and back to [0, 1].

Two halves, one place:

* Ingestion (:func:`apply_policy`): each dataset declares ``intensity`` in its config; the policy is applied
  once, when the canonical shard is written, and recorded there (columns ``intensity`` = the policy as
  canonical JSON, ``value_range`` = ``[lo, hi]``, the stored values meaning black and white).

  - ``none``: stored values kept. 8-bit images: ``value_range`` ``[0, 255]``; 16-bit images (or integer
    images within [0, 65535], e.g. MATLAB int16 slices): kept as uint16 with ``value_range`` = the
    image's own ``[min, max]`` (the dtype's ``[0, 65535]`` for generated data, which is drawn over it).
  - ``{value_range: [lo, hi]}``: like ``none`` for 16-bit data, with a declared range instead of the
    image's own (e.g. ``[0, 4095]`` for 12-bit data).
  - ``{percentile: [p_lo, p_hi]}``: per image, the ``p_lo`` and ``p_hi`` percentiles (numpy's linear
    interpolation, over all pixels and channels) become 0 and 255; uint8 output.
  - ``{window: [lo, hi]}``: the fixed stored values ``lo`` and ``hi`` become 0 and 255; uint8 output.
  - ``{ct_preset: soft_tissue|lung|bone|brain}``: a window in Hounsfield units (:data:`CT_PRESETS`, as
    DICOM's LINEAR VOI function, :func:`ct_window`) for DICOM / NIfTI sources, whose values are HU after
    RescaleSlope/RescaleIntercept (``scl_slope`` / ``scl_inter``); uint8 output.

  Windowing is ``round(clip((x - lo) / (hi - lo), 0, 1) * 255)`` in float64.

* Use (:func:`data_range`, :func:`to_unit`): every consumer that turns stored values into numbers (model
  preprocessing, training data, attacks, SSIM) takes the shard's ``value_range``; without one, only 8-bit
  images have a default (``[0, 255]``); a 16-bit image without its range is an error, never the dtype range.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medfm_robust.errors import ConfigError, DataError

# CT windows as (centre, width) in HU, the usual radiology presets (Radiopaedia, "Windowing (CT)"):
# soft tissue W 400 L 40, lung W 1500 L -600, bone W 1800 L 400, brain W 80 L 40.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
HU_SUFFIXES = (".dcm", ".nii", ".nii.gz")  # sources whose values are Hounsfield units after rescaling
POLICY_KEYS = ("percentile", "window", "ct_preset", "value_range")
UINT8_RANGE = (0.0, 255.0)
UINT16_RANGE = (0.0, 65535.0)

Policy = str | dict[str, Any]
ValueRange = tuple[float, float]


def _pair(value: Any, where: str, *, lo: float = -np.inf, hi: float = np.inf) -> list[float]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"config key '{where}': expected [lo, hi] (two numbers), got {value!r}")
    a, b = float(value[0]), float(value[1])
    if not (np.isfinite(a) and np.isfinite(b) and lo <= a < b <= hi):
        raise ConfigError(f"config key '{where}': need {lo:g} <= lo < hi <= {hi:g}, got {value!r}")
    return [a, b]


def parse_policy(spec: Any, where: str = "intensity") -> Policy:
    """Validate a config ``intensity`` value; returns the canonical policy (``"none"`` or a one-key dict
    with float pairs). ``where`` names the config key in errors (e.g. ``datasets.brain_tumor.intensity``)."""
    if spec is None or spec == "none":
        return "none"
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in POLICY_KEYS:
        raise ConfigError(
            f"config key '{where}': expected none or a mapping with one of {', '.join(POLICY_KEYS)}, "
            f"got {spec!r}"
        )
    key, value = next(iter(spec.items()))
    if key == "ct_preset":
        if value not in CT_PRESETS:
            raise ConfigError(
                f"config key '{where}.ct_preset': unknown preset {value!r} (known: {', '.join(CT_PRESETS)})"
            )
        return {key: str(value)}
    if key == "percentile":
        return {key: _pair(value, f"{where}.{key}", lo=0.0, hi=100.0)}
    return {key: _pair(value, f"{where}.{key}")}


def policy_json(policy: Policy) -> str:
    """The canonical JSON text of a parsed policy (the shard's ``intensity`` column), e.g. ``"none"``
    or ``{"percentile":[0.5,99.5]}``."""
    return json.dumps(policy, sort_keys=True, separators=(",", ":"))


def ct_window(preset: str) -> ValueRange:
    """``(lo, hi)`` in HU of a CT preset as DICOM's LINEAR VOI function defines a window of centre ``c``
    and width ``w`` (PS3.3 C.11.2.1.2.1): ``c - 0.5 -/+ (w - 1) / 2`` map to black and white."""
    c, w = CT_PRESETS[preset]
    return c - 0.5 - (w - 1.0) / 2.0, c - 0.5 + (w - 1.0) / 2.0


def window_to_uint8(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``round(clip((x - lo) / (hi - lo), 0, 1) * 255)`` as uint8 (float64 arithmetic); ``hi > lo``."""
    x = (np.asarray(image, dtype=np.float64) - lo) / (hi - lo)
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _as_stored(image: np.ndarray, source: str, key: str) -> np.ndarray:
    """uint8/uint16 kept; other integer-valued images within [0, 65535] become uint16; else an error."""
    if image.dtype in (np.uint8, np.uint16):
        return image
    arr = np.asarray(image)
    if arr.dtype.kind in "iuf" and arr.size:
        if arr.dtype.kind == "f" and (not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.rint(arr))):
            bad = "non-integer values"
        elif arr.min() < 0 or arr.max() > 65535:
            bad = f"values in [{arr.min():g}, {arr.max():g}], outside [0, 65535]"
        else:
            return arr.astype(np.uint16)
    else:
        bad = f"dtype {arr.dtype}"
    raise DataError(
        f"{source}: image has {bad}; intensity policy 'none' keeps stored values, so declare a window, "
        f"a percentile window or a ct_preset (config key '{key}')"
    )


def apply_policy(
    image: np.ndarray,
    policy: Policy,
    source: str,
    *,
    full_dtype_range: bool = False,
    key: str = "datasets.<name>.intensity",
) -> tuple[np.ndarray, ValueRange]:
    """Apply a parsed intensity ``policy`` to one source image; returns ``(stored image, value_range)``.

    ``image``: ``H x W`` or ``H x W x 3``, any numeric dtype (HU floats for DICOM / NIfTI sources).
    Output: uint8 with ``(0, 255)`` for the windowing policies and 8-bit sources; uint16 with the image's
    own ``(min, max)`` (``full_dtype_range``: ``(0, 65535)``) or the declared range for 16-bit data kept
    raw. ``source`` names the file and ``key`` the config key in errors; ``ct_preset`` needs a DICOM /
    NIfTI ``source``.
    """
    arr = np.asarray(image)
    if arr.size == 0:
        raise DataError(f"{source}: empty image")
    if policy == "none" or (isinstance(policy, dict) and "value_range" in policy):
        stored = _as_stored(arr, source, key)
        if stored.dtype == np.uint8 and policy == "none":
            return stored, UINT8_RANGE
        if isinstance(policy, dict):
            lo, hi = policy["value_range"]
            return stored, (float(lo), float(hi))
        if full_dtype_range:
            return stored, dtype_value_range(stored)
        lo, hi = float(stored.min()), float(stored.max())
        return stored, (lo, hi if hi > lo else lo + 1.0)  # a constant image still has a unit of range
    assert isinstance(policy, dict)
    if arr.dtype.kind not in "iuf":
        raise DataError(f"{source}: image dtype {arr.dtype} cannot be windowed")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{source}: image holds NaN or infinite values")
    if "ct_preset" in policy:
        if not source.lower().endswith(HU_SUFFIXES):
            raise DataError(
                f"{source}: ct_preset needs Hounsfield units, read only from DICOM / NIfTI sources "
                f"({', '.join(HU_SUFFIXES)}); use a window for other files"
            )
        lo, hi = ct_window(policy["ct_preset"])
    elif "window" in policy:
        lo, hi = policy["window"]
    else:
        lo, hi = (float(v) for v in np.percentile(arr.astype(np.float64), policy["percentile"]))
        if hi <= lo:  # a (nearly) constant image: everything at or below lo is black
            hi = lo + 1.0
    return window_to_uint8(arr, lo, hi), UINT8_RANGE


def check_value_range(value_range: Sequence[float], source: str = "value_range") -> ValueRange:
    """``(lo, hi)`` as floats; both finite and ``hi > lo``, else ``DataError`` naming ``source``."""
    if len(value_range) != 2:
        raise DataError(f"{source}: value_range must be [lo, hi], got {list(value_range)}")
    lo, hi = float(value_range[0]), float(value_range[1])
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise DataError(f"{source}: value_range [{lo}, {hi}] is not a finite range with hi > lo")
    return lo, hi


def dtype_value_range(image: np.ndarray) -> ValueRange:
    """``(0, 255)`` for uint8, ``(0, 65535)`` for uint16: the range of data generated over the whole dtype
    (the embedded demo's images, and VLM samples, whose tables carry no ``value_range``)."""
    return UINT16_RANGE if np.asarray(image).dtype == np.uint16 else UINT8_RANGE


def resolve_range(image: np.ndarray, value_range: Sequence[float] | None = None) -> ValueRange:
    """The stored values meaning black and white: ``value_range`` when given, else ``(0, 255)`` for uint8.

    A non-8-bit image without ``value_range`` raises ``DataError`` (16-bit data are never scaled by the
    dtype's range: a 0-1,300 MRI slice would be nearly black).
    """
    if value_range is not None:
        return check_value_range(value_range)
    if np.asarray(image).dtype == np.uint8:
        return UINT8_RANGE
    raise DataError(
        f"a {np.asarray(image).dtype} image needs its value_range (the shard column); only 8-bit images "
        "default to [0, 255]"
    )


def data_range(image: np.ndarray, value_range: Sequence[float] | None = None) -> float:
    """``hi - lo`` of the image's value range (the SSIM ``data_range``; 255.0 for 8-bit without one)."""
    lo, hi = resolve_range(image, value_range)
    return hi - lo


def to_unit(image: np.ndarray, value_range: Sequence[float] | None = None) -> np.ndarray:
    """Stored image (any shape) to float32 in [0, 1]: ``clip((x - lo) / (hi - lo), 0, 1)``.

    With ``lo == 0`` it is float32 ``x / hi``: exactly the former ``x / 255`` (uint8) and ``x / 65535``.
    """
    lo, hi = resolve_range(image, value_range)
    arr = np.asarray(image)
    if lo == 0.0:
        out = arr.astype(np.float32) / np.float32(hi)
    else:
        out = ((arr.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
    return np.clip(out, np.float32(0.0), np.float32(1.0))


def to_rgb8(
    image: np.ndarray, value_range: Sequence[float] | None = None, source: str = "image"
) -> np.ndarray:
    """Stored ``H x W`` / ``H x W x 1`` / ``H x W x 3`` image to ``H x W x 3`` uint8 for 8-bit consumers
    (VLM processors, API requests): 8-bit images kept as they are (without ``value_range`` or with
    ``[0, 255]``), others windowed by their ``value_range`` (:func:`window_to_uint8`), never min-max
    stretched, so intensity perturbations reach the model as they are; gray repeated to 3 channels.
    ``source`` names the image in errors."""
    arr = np.asarray(image)
    if arr.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{source}: dtype {arr.dtype}; expected uint8 or uint16")
    if is_plain_8bit(arr, value_range):
        out = arr
    else:
        lo, hi = resolve_range(arr, None if value_range is None else check_value_range(value_range, source))
        out = window_to_uint8(arr, lo, hi)
    shape_error = f"{source}: shape {arr.shape}; expected H x W or H x W x 3"
    return np.ascontiguousarray(three_channels(out, shape_error))


def is_plain_8bit(image: np.ndarray, value_range: Sequence[float] | None = None) -> bool:
    """Whether ``image`` is uint8 whose stored values are its 0..255 intensities (no range, or ``[0, 255]``),
    so 8-bit consumers can take it as it is."""
    return np.asarray(image).dtype == np.uint8 and (
        value_range is None or tuple(map(float, value_range)) == UINT8_RANGE
    )


def three_channels(image: np.ndarray, error: str) -> np.ndarray:
    """``H x W`` / ``H x W x 1`` repeated to ``H x W x 3`` (``H x W x 3`` kept); any other shape raises
    ``DataError(error)``."""
    out = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    if out.ndim != 3 or out.shape[2] != 3:
        raise DataError(error)
    return out

