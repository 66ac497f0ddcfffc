"""VLM metrics: VQA accuracy, caption scores, grounding IoU / Acc@IoU>=0.5, and the per-sample table.

Per-sample metrics table (``paths.vlm_metrics(model, task, dataset, perturbation)``), one row
per (sample, level), sorted by (``sample_id``, ``level``):
``sample_id``, ``model``, ``task``, ``dataset``, ``modality``, ``perturbation``, ``category``
(``clean``/``base``/``medical``/``control``), ``level`` (0 for clean and controls), ``ssim``, ``in_band``,
``raw_output`` (verbatim), ``parsed`` (letter / cleaned caption / inclusive pixel box text; ``""`` when
unparseable), ``parse_ok``, ``parse_method``, ``abstained`` (the output declines to answer, see
:func:`medfm_robust.vlm.parsing.abstained`), ``reference`` (correct letter / reference caption / box text),
task scores (``correct``; sentence ``bleu1``..``bleu4``, ``rouge_l``, ``cider`` [``meteor``] and the BLEU
counts ``bleu_testlen``, ``bleu_reflen``, ``bleu_guess1..4``, ``bleu_correct1..4`` from which the report
forms corpus BLEU-4 of any sample set; ``iou``, ``hit``),
[``judge_score``], ``model_revision``.

The image-blind controls (``perturbation`` ``blank_image`` / ``no_image``, category ``control``) are the
clean questions asked with a mid-grey image / without an image: a model near its control score is guessing.

Failures are never dropped: an unparseable VQA answer is ``correct=False``; an unparseable box has
``iou=0``, ``hit=False``; an empty caption scores 0. ``parse_ok`` lets the report count them.

This module is a leaf: it scores *parsed* values and imports nothing from :mod:`medfm_robust.vlm`.
Parsing raw model output is the VLM side's job (:func:`medfm_robust.vlm.scoring.score_outputs` parses,
then calls :func:`metrics_table`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from medfm_robust.metrics.captions import BLEU_STATS, CAPTION_METRICS, caption_scores

IOU_THRESHOLD = 0.5
CONDITION_COLUMNS = ("perturbation", "category", "level", "ssim", "in_band")
CLEAN_CONDITION: dict[str, Any] = {"perturbation": "clean", "category": "clean", "level": 0, "ssim": 1.0,
                                   "in_band": True}


class Parsed(Protocol):
    """A parsed model output (:class:`medfm_robust.vlm.parsing.Parsed`): ``ok``, ``value`` (letter,
    caption, or inclusive pixel box floats), ``text`` (the ``parsed`` column), ``method``."""

    ok: bool
    value: Any
    text: str
    method: str


def box_iou(a: Sequence[float] | None, b: Sequence[float] | None) -> float:
    """IoU of two inclusive pixel boxes ``[x0, y0, x1, y1]`` (a pixel box covers ``[x0, x1 + 1)``).

    Floats are allowed (parsed normalised boxes); a None or empty box gives 0.
    """
    if a is None or b is None:
        return 0.0
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    ax1, ay1, bx1, by1 = ax1 + 1, ay1 + 1, bx1 + 1, by1 + 1
    iw = min(ax1, bx1) - max(ax0, bx0)
    ih = min(ay1, by1) - max(ay0, by0)
    inter = max(iw, 0.0) * max(ih, 0.0)
    area_a = max(ax1 - ax0, 0.0) * max(ay1 - ay0, 0.0)
    area_b = max(bx1 - bx0, 0.0) * max(by1 - by0, 0.0)
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def vqa_accuracy(correct: Sequence[bool]) -> float:
    """Fraction correct (unparseable answers are already ``False``); NaN for an empty set."""
    arr = np.asarray(correct, dtype=bool)
    return float(arr.mean()) if arr.size else float("nan")


def grounding_summary(ious: Sequence[float], threshold: float = IOU_THRESHOLD) -> dict[str, float]:
    """``mean_iou`` and ``acc_iou50`` (fraction with IoU >= ``threshold``) over all samples."""
    arr = np.asarray(ious, dtype=np.float64)
    if not arr.size:
        return {"mean_iou": float("nan"), "acc_iou50": float("nan")}
    return {"mean_iou": float(arr.mean()), "acc_iou50": float((arr >= threshold).mean())}


def score_samples(
    task: str,
    rows: Sequence[Mapping[str, Any]],
    parsed: Sequence[Parsed],
    *,
    caption_tokenizer: str = "simple",
    meteor: bool = False,
) -> dict[str, np.ndarray]:
    """Task score columns for parsed outputs of ``rows`` (sample/condition records, same order).

    vqa -> ``correct``; caption -> ``bleu1..bleu4`` (sentence BLEU), ``rouge_l``, ``cider`` (+ ``meteor``)
    and the BLEU counts :data:`~medfm_robust.metrics.captions.BLEU_STATS` (corpus BLEU of any subset), each
    group of rows with one (``perturbation``, ``level``) scored as one corpus; grounding -> ``iou``, ``hit``
    (IoU >= 0.5). Unparseable outputs score as wrong / 0.
    """
    if len(rows) != len(parsed):
        raise ValueError(f"{len(parsed)} parsed outputs for {len(rows)} rows")
    if task == "vqa":
        hits = [p.ok and p.value == str(r["answer"]) for p, r in zip(parsed, rows, strict=True)]
        return {"correct": np.array(hits, dtype=bool)}
    if task == "caption":
        names = (*CAPTION_METRICS, *(["meteor"] if meteor else []), *BLEU_STATS)
        cols = {k: np.zeros(len(rows)) for k in names}
        groups: dict[tuple[str, int], list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault((str(r.get("perturbation", "clean")), int(r.get("level", 0))), []).append(i)
        for _, idx in sorted(groups.items()):
            sc = caption_scores([str(rows[i]["reference"]) for i in idx], [parsed[i].text for i in idx],
                                tokenizer=caption_tokenizer, meteor=meteor)
            for k in names:
                cols[k][idx] = sc.per_sample[k]
        return cols
    if task == "grounding":
        ious = np.array([box_iou(p.value if p.ok else None, r.get("box"))
                         for p, r in zip(parsed, rows, strict=True)], dtype=np.float64)
        return {"iou": ious, "hit": ious >= IOU_THRESHOLD}
    raise ValueError(f"unknown VLM task '{task}'")


def with_clean_defaults(conditions: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``conditions`` (index reset) with missing condition columns set to the clean condition."""
    cond = conditions.reset_index(drop=True).copy()
    for col, val in CLEAN_CONDITION.items():
        if col not in cond.columns:
            cond[col] = val
    return cond


def metrics_table(
    task: str,
    cond: pd.DataFrame,
    raw: Sequence[str],
    parsed: Sequence[Parsed],
    *,
    abstained: Sequence[bool],
    reference: Sequence[str],
    model: str,
    model_revision: str,
    caption_tokenizer: str = "simple",
    meteor: bool = False,
    judge_scores: Sequence[float | None] | None = None,
) -> pd.DataFrame:
    """The per-sample metrics table of parsed outputs (see the module docstring), sorted by
    (``sample_id``, ``level``).

    ``cond``: the conditions table with every condition column (:func:`with_clean_defaults`); ``raw``,
    ``parsed``, ``abstained`` and ``reference`` have one entry per row of ``cond``, same order.
    """
    records = cond.to_dict("records")
    out = pd.DataFrame({
        "sample_id": cond["sample_id"].astype(str), "model": model, "task": task,
        "dataset": cond["dataset"].astype(str), "modality": cond["modality"].astype(str),
        "perturbation": cond["perturbation"].astype(str), "category": cond["category"].astype(str),
        "level": cond["level"].astype("int8"), "ssim": cond["ssim"].astype("float64"),
        "in_band": cond["in_band"].astype(bool), "raw_output": list(raw), "parsed": [p.text for p in parsed],
        "parse_ok": [p.ok for p in parsed], "parse_method": [p.method for p in parsed],
        "abstained": list(abstained),
    })
    out["reference"] = list(reference)
    for col, values in score_samples(task, records, parsed, caption_tokenizer=caption_tokenizer,
                                     meteor=meteor).items():
        out[col] = values
    if judge_scores is not None:
        if len(judge_scores) != len(out):
            raise ValueError("judge_scores must have one entry per sample")
        scores = [np.nan if s is None else float(s) for s in judge_scores]
        out["judge_score"] = np.asarray(scores, dtype=np.float64)
    out["model_revision"] = model_revision
    return out.sort_values(["sample_id", "level"], kind="stable").reset_index(drop=True)


def summarise(table: pd.DataFrame, *, caption_tokenizer: str = "simple") -> pd.DataFrame:
    """One row per (model, task, dataset, perturbation, category, level): ``n``, ``parse_failures``,
    ``mean_ssim`` and the task's set-level metrics (``accuracy``; corpus ``bleu1``..``bleu4``,
    ``rouge_l``, ``cider`` recomputed from ``parsed``/``reference``; ``mean_iou``, ``acc_iou50``)."""
    keys = ["model", "task", "dataset", "perturbation", "category", "level"]
    rows: list[dict[str, Any]] = []
    for key, g in table.groupby(keys, sort=True):
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        row.update(n=len(g), parse_failures=int((~g["parse_ok"].astype(bool)).sum()),
                   abstentions=int(g["abstained"].astype(bool).sum()) if "abstained" in g else 0,
                   mean_ssim=float(g["ssim"].mean()))
        task = row["task"]
        if task == "vqa":
            row["accuracy"] = vqa_accuracy(g["correct"])
        elif task == "caption":
            sc = caption_scores(list(g["reference"]), list(g["parsed"]), tokenizer=caption_tokenizer)
            row.update(sc.corpus)
        elif task == "grounding":
            row.update(grounding_summary(g["iou"]))
        rows.append(row)
    return pd.DataFrame(rows)


def conditions_from(samples: pd.DataFrame, condition: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """A clean conditions table (the samples plus ``perturbation='clean'``, level 0, SSIM 1) or, with
    ``condition``, the samples with those condition values set."""
    cond = samples.copy()
    values = {**CLEAN_CONDITION, **(condition or {})}
    for col, val in values.items():
        cond[col] = val
    return cond
