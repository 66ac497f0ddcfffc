"""SSIM-calibrated perturbation engine: 40 registered effects, per-image calibration, label-consistent.

``from medfm_robust.perturb import calibrate_levels, apply, REGISTRY``; see ``registry`` (metadata),
``ssim`` (the one SSIM definition), ``calibrate`` (per-image calibration), ``search`` (its search) and
``table`` (Parquet shards).
"""

# Importing the family modules registers their types (base first, then the medical families).
# isort: off
from medfm_robust.perturb import (  # noqa: F401
    base,
    dermoscopy,
    mri,
    ultrasound,
    endoscopy,
    fundus_oct,
    pathology,
    ct,
    xray,
    angiography,
)

# isort: on
from medfm_robust.perturb._common import Context
from medfm_robust.perturb.calibrate import CalibrationResult, apply, calibrate, calibrate_levels
from medfm_robust.perturb.registry import MODALITIES, REGISTRY, ParamSpec, PerturbationSpec, applicable_types
from medfm_robust.perturb.search import DEFAULT_BANDS, in_band
from medfm_robust.perturb.ssim import SSIMReference, ssim

__all__ = [
    "DEFAULT_BANDS",
    "MODALITIES",
    "REGISTRY",
    "CalibrationResult",
    "Context",
    "ParamSpec",
    "PerturbationSpec",
    "SSIMReference",
    "applicable_types",
    "apply",
    "calibrate",
    "calibrate_levels",
    "in_band",
    "ssim",
]
