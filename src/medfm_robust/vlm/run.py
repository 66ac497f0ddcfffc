"""Evaluation: batched generation over every condition of one (model, task, dataset), per-sample tables.

One call loads the model once and answers every condition: ``clean`` (the test rows of the sample table)
and one conditions table per perturbation type (:func:`medfm_robust.vlm.perturb.conditions_for`: each
applicable test sample at every level; boxes moved for label-moving types). All rows are generated in one
pass (batches mix conditions, so the GPU stays full), then each condition is parsed in the model's box
convention and scored by :func:`medfm_robust.metrics.vlm.score_outputs` and written to
``results/metrics/vlm/{model}/{task}/{dataset}/{perturbation}.parquet`` (column list in that module and in
``docs/ARCHITECTURE.md``; a type that applies to no sample of the dataset gives an empty table).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medfm_robust.errors import DataError
from medfm_robust.io import decode_png, write_parquet_atomic

log = logging.getLogger(__name__)


def generate_all(model: Any, rows: Sequence[Mapping[str, Any]], task: str, convention: str,
                 max_new_tokens: int, chunk: int = 512) -> list[str]:
    """Raw outputs for ``rows`` (sample records with ``image_png``), decoding images chunk by chunk."""
    from tqdm import tqdm

    from medfm_robust.vlm.prompts import build_prompt

    outputs: list[str] = []
    for start in tqdm(range(0, len(rows), chunk), desc=f"{model.name} {task}", leave=False):
        part = rows[start : start + chunk]
        images = [decode_png(r["image_png"], source=str(r["sample_id"])) for r in part]
        prompts = [build_prompt(task, r, convention) for r in part]
        outputs.extend(model.generate(images, prompts, task, max_new_tokens))
    return outputs


def build_conditions(
    samples_path: str | Path,
    task: str,
    shards: Mapping[str, Sequence[str | Path]],
    *,
    levels: Sequence[int],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, pd.DataFrame]:
    """``{"clean": ..., type: ...}`` conditions tables; ``shards`` maps each type to its perturbed shards."""
    from medfm_robust.metrics.vlm import conditions_from
    from medfm_robust.vlm.datasets import read_samples
    from medfm_robust.vlm.perturb import conditions_for

    samples = read_samples(samples_path)
    test = samples[samples["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise DataError(f"{samples_path}: no test samples to evaluate")
    frames = {"clean": conditions_from(test)}
    for name in sorted(shards):
        frames[name] = conditions_for(samples, task, name, shards[name], levels=levels, include=include,
                                      exclude=exclude)
    return frames


def evaluate_conditions(
    model: Any,
    frames: Mapping[str, pd.DataFrame],
    outputs: Mapping[str, str | Path],
    *,
    task: str,
    convention: str,
    max_new_tokens: int,
    scoring: Mapping[str, Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """Generate for every row of every condition in one pass, then score and write each condition.

    ``scoring`` may hold ``caption_tokenizer`` and ``meteor`` (caption scoring) and ``judge_cfg`` (the
    ``vlm.judge`` and ``vlm.api`` settings when the optional LLM judge is enabled for this task).
    """
    from medfm_robust.metrics.captions import meteor_enabled
    from medfm_robust.metrics.vlm import score_outputs
    from medfm_robust.vlm.api import maybe_judge

    scoring = dict(scoring or {})
    judge_cfg = scoring.get("judge_cfg")

    if set(outputs) != set(frames):
        raise ValueError(f"outputs {sorted(outputs)} do not match the conditions {sorted(frames)}")
    rows: list[dict[str, Any]] = []
    spans: dict[str, tuple[int, int]] = {}
    for name in sorted(frames):
        start = len(rows)
        rows.extend(frames[name].to_dict("records"))
        spans[name] = (start, len(rows))
    t0 = time.perf_counter()
    raw = generate_all(model, rows, task, convention, max_new_tokens)
    seconds = time.perf_counter() - t0
    log.info("%s/%s: %d generations in %.1f s (%.1f ms each)", model.name, task, len(rows), seconds,
             1000 * seconds / max(1, len(rows)))
    tables = {}
    for name, (a, b) in spans.items():
        judged = None
        if judge_cfg:
            judged = maybe_judge(task, frames[name].to_dict("records"), raw[a:b], judge_cfg,
                                 cache_dir=judge_cfg["api"].get("cache_dir"))
        table = score_outputs(task, frames[name], raw[a:b], model=model.name, model_revision=model.revision,
                              convention=convention,
                              caption_tokenizer=scoring.get("caption_tokenizer", "simple"),
                              meteor=meteor_enabled(scoring.get("meteor", False)), judge_scores=judged)
        write_parquet_atomic(outputs[name], table)
        tables[name] = table
    return tables


def run_evaluation_job(
    *,
    model_name: str,
    spec: Mapping[str, Any],
    task: str,
    samples: str | Path,
    shards: Mapping[str, Sequence[str | Path]],
    outputs: Mapping[str, str | Path],
    max_new_tokens: int,
    levels: Sequence[int],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    model_dir: str | Path | None = None,
    adapter_dir: str | Path | None = None,
    resources_dir: str | Path = "resources",
    api_settings: Mapping[str, Any] | None = None,
    device: str | None = None,
    scoring: Mapping[str, Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """The ``vlm_evaluate`` / ``vlm_evaluate_api`` job: build conditions, load the model, evaluate, write.

    Conditions are built before the model is loaded, so bad inputs fail fast and cheaply.
    """
    from medfm_robust.vlm.models import box_convention, load_vlm

    frames = build_conditions(samples, task, shards, levels=levels, include=include, exclude=exclude)
    convention = box_convention(model_name, dict(spec), dict(api_settings or {}))
    api = dict(api_settings or {})
    model = load_vlm(model_name, dict(spec), resources_dir=resources_dir, model_dir=model_dir,
                     adapter_dir=adapter_dir, device=device, api_settings=api,
                     cache_path=api.get("cache_dir"))
    log.info("%s (%s): %s on %s, %d conditions, box convention %s", model_name, model.revision, task,
             samples, len(frames), convention)
    return evaluate_conditions(model, frames, outputs, task=task, convention=convention,
                               max_new_tokens=max_new_tokens, scoring=scoring)
