"""Segmentation stage: model zoo behind one interface, box prompts, attacks and robustness evaluation.

The names below (``build_model``, ``PromptableSegmenter``, ...) load on first use, so that importing a
torch-free submodule (``finetune_config``, ``workflow``) does not import torch. The models are registered in
:mod:`medfm_robust.seg.models` (``MODEL_SPECS``).
"""

from __future__ import annotations

import importlib
from typing import Any

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

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
