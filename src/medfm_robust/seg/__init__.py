"""Segmentation stage: model zoo behind one interface, box prompts, attacks and robustness evaluation.

The heavy names (``build_model``, ``PromptableSegmenter``, ...) load on first use, so that the workflow can
read :data:`MODEL_NAMES` without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Registered segmentation models (``medfm_robust.seg.models.MODEL_SPECS`` has one entry for each).
MODEL_NAMES: tuple[str, ...] = ("medsam", "sam_med2d", "sam_vit_b", "lite_medsam", "tiny_sam")

_LAZY = {
    "MODEL_SPECS": "medfm_robust.seg.models",
    "ModelSpec": "medfm_robust.seg.models",
    "PromptableSegmenter": "medfm_robust.seg.models",
    "build_model": "medfm_robust.seg.models",
    "images_to_batch": "medfm_robust.seg.models",
    "to_unit_range": "medfm_robust.seg.models",
    "evaluate_dataset": "medfm_robust.seg.evaluate",
    "evaluate_attacks": "medfm_robust.seg.evaluate",
}

__all__ = ["MODEL_NAMES", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
