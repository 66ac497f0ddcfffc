"""Segmentation stage: model zoo behind one interface, box prompts, attacks and robustness evaluation."""

from medfm_robust.seg.models import (
    MODEL_NAMES,
    MODEL_SPECS,
    ModelSpec,
    PromptableSegmenter,
    build_model,
    images_to_batch,
    to_unit_range,
)

__all__ = [
    "MODEL_NAMES",
    "MODEL_SPECS",
    "ModelSpec",
    "PromptableSegmenter",
    "build_model",
    "images_to_batch",
    "to_unit_range",
]
