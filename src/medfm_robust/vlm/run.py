"""Evaluation: batched generation over every condition of one (model, task, dataset), per-sample tables.

One call loads the model once and answers every condition: ``clean`` (the test rows of the sample table)
and one conditions table per perturbation type (:func:`medfm_robust.vlm.perturb.conditions_for`: each
applicable test sample at every level; boxes moved for label-moving types). All rows are generated in one
pass (batches mix conditions, so the GPU stays full), then each condition is parsed in the model's box
convention and scored by :func:`medfm_robust.vlm.scoring.score_outputs` and written to
``paths.vlm_metrics(model, task, dataset, perturbation)`` (column list in
:mod:`medfm_robust.metrics.vlm` and ``docs/ARCHITECTURE.md``; a type that applies to no sample of the
dataset gives an empty table).

Image-blind controls (:data:`CONTROLS`, category ``control``): the clean questions asked once more with a
blank mid-grey image (``blank_image``) and with no image at all (``no_image``, where the model allows it:
API models send a text-only request, local models when their processor takes a text-only prompt; else the
table is empty and the log says why). A model that scores as well without the image is guessing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfm_robust.config import with_defaults
from medfm_robust.errors import ConfigError, DataError
from medfm_robust.io import decode_png, encode_png, write_parquet_atomic

log = logging.getLogger(__name__)

#: Image-blind control conditions (``vlm.controls``): a mid-grey image, no image.
CONTROLS = ("blank_image", "no_image")
#: Grey level of the blank image (uint8 mid-grey).
BLANK_GREY = 128


def generate_all(model: Any, rows: Sequence[Mapping[str, Any]], task: str, convention: str,
                 max_new_tokens: int, chunk: int = 512, prompt: Mapping[str, Any] | None = None) -> list[str]:
    """Raw outputs for ``rows`` (sample records with ``image_png``; None = no image), decoding images chunk
    by chunk; rows with and without an image go to the model in separate calls. ``prompt``: the task's
    ``template`` / ``option_line`` (see :func:`medfm_robust.vlm.prompts.build_prompt`)."""
    from tqdm import tqdm

    from medfm_robust.vlm.prompts import build_prompt

    prompt = dict(prompt or {})
    outputs: list[str] = [""] * len(rows)
    groups = [[i for i, r in enumerate(rows) if r["image_png"] is not None],
              [i for i, r in enumerate(rows) if r["image_png"] is None]]
    for idx in groups:
        for start in tqdm(range(0, len(idx), chunk), desc=f"{model.name} {task}", leave=False):
            part = [rows[i] for i in idx[start : start + chunk]]
            images = [None if r["image_png"] is None else
                      decode_png(r["image_png"], source=str(r["sample_id"])) for r in part]
            prompts = [build_prompt(task, r, convention, template=prompt.get("template"),
                                    option_line=prompt.get("option_line")) for r in part]
            answers = model.generate(images, prompts, task, max_new_tokens)
            for i, out in zip(idx[start : start + chunk], answers, strict=True):
                outputs[i] = out
    return outputs


def control_conditions(test: pd.DataFrame, control: str) -> pd.DataFrame:
    """The clean ``test`` rows asked image-blind: ``blank_image`` -> a uint8 mid-grey (:data:`BLANK_GREY`)
    image of each sample's ``height x width``; ``no_image`` -> ``image_png`` None. Category ``control``,
    level 0, SSIM NaN (not a perturbation of the image)."""
    from medfm_robust.metrics.vlm import conditions_from

    if control not in CONTROLS:
        raise ConfigError(f"config key 'vlm.controls': unknown control '{control}' "
                          f"(one of {', '.join(CONTROLS)})")
    cond = conditions_from(test, {"perturbation": control, "category": "control", "level": 0,
                                  "ssim": float("nan"), "in_band": True})
    if control == "no_image":
        cond["image_png"] = None
    else:
        blanks: dict[tuple[int, int], bytes] = {}
        for h, w in zip(cond["height"], cond["width"], strict=True):
            key = (int(h), int(w))
            if key not in blanks:
                blanks[key] = encode_png(np.full(key, BLANK_GREY, dtype=np.uint8))
        sizes = zip(cond["height"], cond["width"], strict=True)
        cond["image_png"] = [blanks[(int(h), int(w))] for h, w in sizes]
    return cond


def accepts_no_image(model: Any) -> bool:
    """Whether ``model`` can answer with no image: API models (a text-only request) yes; a local model when
    its chat template and processor take a text-only prompt (tried once); anything else no."""
    from medfm_robust.vlm.models import ApiVLM, LocalVLM

    if isinstance(model, ApiVLM):
        return True
    if isinstance(model, LocalVLM):
        try:
            model.encode([None], [model.render("Is there an image?", with_image=False)])
        except Exception as exc:  # any processor/template failure means: no text-only path
            log.warning("%s: no text-only input (%s: %s); the no_image control stays empty", model.name,
                        type(exc).__name__, exc)
            return False
        return True
    return False


def build_conditions(
    samples_path: str | Path,
    task: str,
    shards: Mapping[str, Sequence[str | Path]],
    *,
    levels: Sequence[int],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    controls: Sequence[str] = (),
) -> dict[str, pd.DataFrame]:
    """``{"clean": ..., control: ..., type: ...}`` conditions tables; ``shards`` maps each type to its
    perturbed shards; ``controls`` names the image-blind controls (:func:`control_conditions`)."""
    from medfm_robust.metrics.vlm import conditions_from
    from medfm_robust.vlm.datasets import read_samples
    from medfm_robust.vlm.perturb import conditions_for

    samples = read_samples(samples_path)
    test = samples[samples["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise DataError(f"{samples_path}: no test samples to evaluate")
    frames = {"clean": conditions_from(test)}
    for control in controls:
        frames[control] = control_conditions(test, control)
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
    prompt: Mapping[str, Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """Generate for every row of every condition in one pass, then score and write each condition.

    ``scoring`` may hold ``caption_tokenizer`` and ``meteor`` (caption scoring) and ``judge_cfg`` (the
    ``vlm.judge`` and ``vlm.api`` settings when the optional LLM judge is enabled for this task).
    ``prompt``: the task's prompt ``template`` / ``option_line``. A ``no_image`` condition is left empty
    when the model takes no text-only input (:func:`accepts_no_image`).
    """
    from medfm_robust.metrics.captions import meteor_enabled
    from medfm_robust.vlm.api import maybe_judge
    from medfm_robust.vlm.scoring import score_outputs

    scoring = dict(scoring or {})
    judge_cfg = scoring.get("judge_cfg")

    if set(outputs) != set(frames):
        raise ValueError(f"outputs {sorted(outputs)} do not match the conditions {sorted(frames)}")
    if "no_image" in frames and not accepts_no_image(model):
        frames = {**frames, "no_image": frames["no_image"].iloc[0:0]}
    rows: list[dict[str, Any]] = []
    spans: dict[str, tuple[int, int]] = {}
    for name in sorted(frames):
        start = len(rows)
        rows.extend(frames[name].to_dict("records"))
        spans[name] = (start, len(rows))
    t0 = time.perf_counter()
    raw = generate_all(model, rows, task, convention, max_new_tokens, prompt=prompt)
    seconds = time.perf_counter() - t0
    log.info("%s/%s: %d generations in %.1f s (%.1f ms each)", model.name, task, len(rows), seconds,
             1000 * seconds / max(1, len(rows)))
    tables = {}
    caption = with_defaults("vlm.tasks.caption", None)
    for name, (a, b) in spans.items():
        judged = None
        if judge_cfg:
            judged = maybe_judge(task, frames[name].to_dict("records"), raw[a:b], judge_cfg,
                                 cache_dir=judge_cfg["api"].get("cache_dir"))
        table = score_outputs(task, frames[name], raw[a:b], model=model.name, model_revision=model.revision,
                              convention=convention,
                              caption_tokenizer=scoring.get("caption_tokenizer", caption["tokenizer"]),
                              meteor=meteor_enabled(scoring.get("meteor", caption["meteor"])),
                              judge_scores=judged)
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
    controls: Sequence[str] = (),
    prompt: Mapping[str, Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """The ``vlm_evaluate`` / ``vlm_evaluate_api`` job: build conditions, load the model, evaluate, write.

    Conditions are built before the model is loaded, so bad inputs fail fast and cheaply.
    """
    from medfm_robust.vlm.models import box_convention, load_vlm

    frames = build_conditions(samples, task, shards, levels=levels, include=include, exclude=exclude,
                              controls=controls)
    convention = box_convention(model_name, dict(spec), dict(api_settings or {}))
    api = dict(api_settings or {})
    model = load_vlm(model_name, dict(spec), resources_dir=resources_dir, model_dir=model_dir,
                     adapter_dir=adapter_dir, device=device, api_settings=api,
                     cache_path=api.get("cache_dir"))
    log.info("%s (%s): %s on %s, %d conditions, box convention %s", model_name, model.revision, task,
             samples, len(frames), convention)
    return evaluate_conditions(model, frames, outputs, task=task, convention=convention,
                               max_new_tokens=max_new_tokens, scoring=scoring, prompt=prompt)
