"""Robustness evaluation of one (model, strategy, dataset): clean, every perturbation shard, FGSM and PGD.

* :func:`score_dataset` scores the clean test images once and every level of every given perturbation
  shard (:func:`evaluate_dataset` writes one Parquet per name: ``medfm-robust seg-eval``, tests);
* :func:`score_attacks` runs FGSM and PGD at every level (:func:`evaluate_attacks` writes them);
* :func:`run_evaluation_job` is one workflow job: all of them for one (model, strategy, training seed,
  dataset), written to one Parquet.

Rows follow ``docs/ARCHITECTURE.md`` (segmentation metrics). Inputs and the evaluated subset:
:mod:`medfm_robust.seg.eval_samples`; model and scoring: :mod:`medfm_robust.seg.eval_scoring`; attacks:
:mod:`medfm_robust.seg.eval_attacks`. Each distinct image goes through the image encoder at most once per
encoder weights; the decoder runs in batches.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from medfm_robust.errors import DataError
from medfm_robust.io import write_parquet_atomic
from medfm_robust.metrics.segmentation import METRIC_COLUMNS
from medfm_robust.seg.attacks import AttackSettings
from medfm_robust.seg.cache import EmbeddingEncoder, EncoderStats
from medfm_robust.seg.eval_attacks import evaluate_attacks, score_attacks
from medfm_robust.seg.eval_samples import Sample, load_perturbed_samples, load_test_samples, select_image_ids
from medfm_robust.seg.eval_scoring import EvalSettings, RunIdentity, prepare_model, score_samples
from medfm_robust.seg.models import PromptableSegmenter
from medfm_robust.seg.prompts import BoxJitter

__all__ = [
    "METRIC_COLUMNS",
    "EvalSettings",
    "RunIdentity",
    "Sample",
    "attack_settings",
    "eval_settings",
    "evaluate_attacks",
    "evaluate_dataset",
    "load_perturbed_samples",
    "load_test_samples",
    "run_evaluation_job",
    "score_attacks",
    "score_dataset",
    "select_image_ids",
]

log = logging.getLogger(__name__)


def score_dataset(
    run: RunIdentity,
    dataset: str,
    test_shard: str | Path,
    perturbed: Mapping[str, str | Path],
    settings: EvalSettings,
    model: PromptableSegmenter | None = None,
) -> tuple[dict[str, pd.DataFrame], EncoderStats]:
    """Score the clean test images and every level of every perturbation shard.

    ``perturbed``: perturbation name -> shard path. Returns ``clean`` and each perturbation name -> its
    metric rows (``docs/ARCHITECTURE.md``, segmentation metrics), and the encoder statistics. ``model``: an
    already built model (tests, benchmarks) instead of loading ``run``'s checkpoints.
    """
    model, _ = prepare_model(run, settings, model)
    encoder = EmbeddingEncoder(model, settings.cache_dir)
    ids = select_image_ids(test_shard, list(perturbed.values()), settings.max_images)
    clean = load_test_samples(test_shard, dataset, ids, settings.jitter)
    by_id = {s.image_id: s for s in clean}
    frames = {"clean": score_samples(model, encoder, clean, run, dataset, settings, f"{dataset} clean")}
    for name in tqdm(sorted(perturbed), desc=f"{run.model}/{run.strategy}/{dataset}", unit="shard"):
        samples = load_perturbed_samples(perturbed[name], name, by_id, settings.jitter, dataset)
        frames[name] = score_samples(model, encoder, samples, run, dataset, settings, f"{dataset} {name}")
    n_eval = sum(len(f) for f in frames.values())
    log.info(
        "%d image evaluations, %d encoder passes (%.3f per evaluated image), %d cache hits",
        n_eval,
        encoder.stats.encoded,
        encoder.stats.encoded / max(n_eval, 1),
        encoder.stats.cache_hits,
    )
    return frames, encoder.stats


def evaluate_dataset(
    run: RunIdentity,
    dataset: str,
    test_shard: str | Path,
    perturbed: Mapping[str, str | Path],
    outputs: Mapping[str, str | Path],
    settings: EvalSettings,
    model: PromptableSegmenter | None = None,
) -> dict[str, int]:
    """:func:`score_dataset`, one Parquet per output (``outputs``: ``clean`` and every perturbation name ->
    path). Returns the rows written per output and the encoder statistics (``encoder_passes``,
    ``cache_hits``)."""
    expected = {"clean", *perturbed}
    if set(outputs) != expected:
        raise DataError(f"outputs {sorted(outputs)} must be exactly {sorted(expected)}")
    frames, stats = score_dataset(run, dataset, test_shard, perturbed, settings, model)
    for name, frame in frames.items():
        write_parquet_atomic(outputs[name], frame)
    return {
        **{name: len(frame) for name, frame in frames.items()},
        "encoder_passes": stats.encoded,
        "cache_hits": stats.cache_hits,
    }
# ----------------------------------------------------------------------------------------------------
# Settings from the workflow's params


def eval_settings(params: Mapping[str, Any]) -> EvalSettings:
    """:class:`EvalSettings` from a rule's ``params.settings`` (``rules/segment.smk``: ``seg_params``)."""
    return EvalSettings(
        batch_size=int(params["batch_size"]),
        max_images=params["max_images"],
        attack_max_images=params.get("attack_max_images"),
        jitter=BoxJitter(float(params["box_jitter"]), int(params["seed"])),
        cache_dir=params["cache_dir"],
        device=str(params["device"]),
        threads=params["threads"],
        seed=int(params["seed"]),
        nsd_tolerance=float(params["nsd_tolerance"]),
    )


def attack_settings(params: Mapping[str, Any]) -> AttackSettings:
    """:class:`AttackSettings` from the ``segmentation.attacks`` config mapping."""
    return AttackSettings(
        epsilons=tuple(float(e) for e in params["epsilons"]),
        pgd_steps=tuple(int(s) for s in params["pgd_steps"]),
        pgd_step_factor=float(params["pgd_step_factor"]),
        random_start=bool(params["random_start"]),
        quantize_bits=int(params["quantize_bits"]),
    )


def _plan_run(
    model: str, strategy: str, item: Mapping[str, Any], settings: Mapping[str, Any], seed: int
) -> RunIdentity:
    """The :class:`RunIdentity` of one job-plan item (a trained strategy needs its checkpoint)."""
    if strategy != "zero_shot" and not item["finetuned"]:
        raise DataError(f"strategy '{strategy}' needs a fine-tuned checkpoint for dataset {item['dataset']}")
    return RunIdentity(model, strategy, settings["checkpoint"], item["finetuned"], int(seed))


def run_evaluation_job(
    model: str,
    strategy: str,
    item: Mapping[str, Any],
    settings: Mapping[str, Any],
    attack: Mapping[str, Any],
    train_seed: int = 0,
) -> dict[str, int]:
    """One workflow job: every metric of one (model, strategy, training seed, dataset) in one Parquet.

    ``item``: :func:`medfm_robust.seg.workflow.job_plan` (``dataset``, ``test``, ``shards``, ``finetuned``,
    ``attacks``, ``output``). The model is loaded once; rows of ``clean``, each perturbation and, when
    ``item['attacks']``, ``fgsm`` / ``pgd`` (``attack``: the ``segmentation.attacks`` settings) are written
    together, in name order, to ``item['output']``. Returns the rows per name.
    """
    run = _plan_run(model, strategy, item, settings, train_seed)
    cfg = eval_settings(settings)
    net = prepare_model(run, cfg, None)[0]
    dataset, test, shards = item["dataset"], item["test"], item["shards"]
    frames, _ = score_dataset(run, dataset, test, shards, cfg, model=net)
    if item["attacks"]:
        attack_cfg = attack_settings(attack)
        frames.update(score_attacks(run, dataset, test, list(shards.values()), cfg, attack_cfg, model=net))
    names = sorted(frames)
    write_parquet_atomic(item["output"], pd.concat([frames[n] for n in names], ignore_index=True))
    return {n: len(frames[n]) for n in names}
