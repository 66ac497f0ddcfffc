"""Parsing raw VLM outputs: multiple-choice letters/option text, cleaned captions, grounding boxes.

Every parser returns a :class:`Parsed` (never raises on model output): ``ok`` is False for an unparseable
answer, which the metrics count as wrong (VQA) / IoU 0 (grounding) and count in ``parse_failures``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medfm_robust.vlm.parsing.box_answers import box_from_convention, find_box_numbers, parse_box
from medfm_robust.vlm.parsing.choice import ABSTENTION, SYNONYMS, abstained, is_abstention, parse_choice
from medfm_robust.vlm.parsing.common import Parsed, clean_caption
from medfm_robust.vlm.tasks import REGISTRY as TASK_REGISTRY

__all__ = ["ABSTENTION", "SYNONYMS", "Parsed", "abstained", "box_from_convention", "clean_caption",
           "find_box_numbers", "is_abstention", "parse_answer", "parse_box", "parse_choice"]


def parse_answer(task: str, text: str, sample: Mapping[str, Any], convention: str = "pixel") -> Parsed:
    """Parse ``text`` for ``task`` given the ``sample`` (options / image size) and the model's box
    ``convention`` (grounding only), by the task's answer kind
    (:attr:`~medfm_robust.vlm.tasks.TaskSpec.answer`: letter, text or box)."""
    if task not in TASK_REGISTRY:
        raise ValueError(f"unknown VLM task '{task}'")
    answer = TASK_REGISTRY[task].answer
    if answer == "letter":
        return parse_choice(text, list(sample["options"]))
    if answer == "text":
        return clean_caption(text)
    return parse_box(text, convention, int(sample["width"]), int(sample["height"]))
