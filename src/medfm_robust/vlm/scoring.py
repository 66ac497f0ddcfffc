"""Scoring of raw VLM outputs: parse them (:mod:`medfm_robust.vlm.parsing`), then score the parsed values
with the leaf :mod:`medfm_robust.metrics.vlm` (which never parses and imports nothing from ``vlm``)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from medfm_robust.boxes import box_text
from medfm_robust.metrics.vlm import metrics_table, with_clean_defaults
from medfm_robust.vlm.parsing import abstained, parse_answer
from medfm_robust.vlm.tasks import get_task


def references(task: str, cond: pd.DataFrame) -> list[str]:
    """The ``reference`` column (the task's :attr:`~medfm_robust.vlm.tasks.TaskSpec.reference`): VQA -> the
    correct letter, caption -> the reference caption, grounding -> the inclusive pixel box as text (``""``
    without a box)."""
    column = get_task(task).reference
    if column == "box":
        return [box_text(b) if b is not None else "" for b in cond["box"]]
    return list(cond[column].astype(str).to_numpy())


def score_outputs(
    task: str,
    conditions: pd.DataFrame,
    raw_outputs: Sequence[str],
    *,
    model: str,
    model_revision: str,
    convention: str = "pixel",
    caption_tokenizer: str = "simple",
    meteor: bool = False,
    judge_scores: Sequence[float | None] | None = None,
) -> pd.DataFrame:
    """The per-sample metrics table for ``raw_outputs`` (one per row of ``conditions``, same order).

    ``conditions`` has the sample-table columns (``sample_id``, ``dataset``, ``modality``, ``options``,
    ``answer``, ``reference``, ``box``, ``height``, ``width``) plus ``perturbation``, ``category``, ``level``,
    ``ssim``, ``in_band`` (missing condition columns mean clean: ``clean``/``clean``/0/1.0/True).
    Outputs are parsed in the model's box ``convention``; caption scores are computed per (perturbation,
    level) group, each group scored as one corpus (:func:`medfm_robust.metrics.vlm.metrics_table`).
    """
    if len(conditions) != len(raw_outputs):
        raise ValueError(f"{len(raw_outputs)} outputs for {len(conditions)} samples")
    cond = with_clean_defaults(conditions)
    raw = ["" if r is None else str(r) for r in raw_outputs]
    records = cond.to_dict("records")
    parsed = [parse_answer(task, r, rec, convention) for r, rec in zip(raw, records, strict=True)]
    return metrics_table(
        task, cond, raw, parsed,
        abstained=[abstained(r, p, task) for r, p in zip(raw, parsed, strict=True)],
        reference=references(task, cond), model=model, model_revision=model_revision,
        caption_tokenizer=caption_tokenizer, meteor=meteor, judge_scores=judge_scores,
    )
