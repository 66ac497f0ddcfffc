"""Robustness evaluation of one (model, strategy, dataset): clean, every perturbation shard, FGSM and PGD.

Two entry points, one per workflow job:

* :func:`evaluate_dataset` scores the clean test images once and every level of every given perturbation
  shard, writing ``clean.parquet`` and one ``{perturbation}.parquet`` each;
* :func:`evaluate_attacks` runs FGSM and PGD at every level and writes ``fgsm.parquet`` and ``pgd.parquet``.

Rows follow ``docs/ARCHITECTURE.md`` (segmentation metrics). Inputs and the evaluated subset:
:mod:`medfm_robust.seg.eval_samples`; model and scoring: :mod:`medfm_robust.seg.eval_scoring`; attacks:
:mod:`medfm_robust.seg.eval_attacks`. Each distinct image goes through the image encoder at most once per
encoder weights; the decoder runs in batches.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medfm_robust.errors import DataError
from medfm_robust.io import write_parquet_atomic
from medfm_robust.metrics.segmentation import METRIC_COLUMNS
from medfm_robust.seg.attacks import ATTACKS, AttackSettings
from medfm_robust.seg.cache import EmbeddingEncoder
from medfm_robust.seg.eval_attacks import evaluate_attacks
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
    "run_strategy_job",
    "select_image_ids",
]

log = logging.getLogger(__name__)


def evaluate_dataset(
    run: RunIdentity,
    dataset: str,
    test_shard: str | Path,
    perturbed: Mapping[str, str | Path],
    outputs: Mapping[str, str | Path],
    settings: EvalSettings,
    model: PromptableSegmenter | None = None,
) -> dict[str, int]:
    """Score the clean test images and every level of every perturbation shard; write one Parquet each.

    ``perturbed``: perturbation name -> shard path; ``outputs``: ``clean`` and every perturbation name ->
    Parquet path. Returns the number of rows written per output and the encoder statistics. ``model``: an
    already built model (tests, benchmarks) instead of loading ``run``'s checkpoints.
    """
    expected = {"clean", *perturbed}
    if set(outputs) != expected:
        raise DataError(f"outputs {sorted(outputs)} must be exactly {sorted(expected)}")
    model, _ = prepare_model(run, settings, model)
    encoder = EmbeddingEncoder(model, settings.cache_dir)
    ids = select_image_ids(test_shard, list(perturbed.values()), settings.max_images)
    clean = load_test_samples(test_shard, dataset, ids, settings.jitter)
    by_id = {s.image_id: s for s in clean}
    counts: dict[str, int] = {}
    frame = score_samples(model, encoder, clean, run, dataset, settings, f"{dataset} clean")
    write_parquet_atomic(outputs["clean"], frame)
    counts["clean"] = len(frame)
    for name in tqdm(sorted(perturbed), desc=f"{run.model}/{run.strategy}/{dataset}", unit="shard"):
        samples = load_perturbed_samples(perturbed[name], name, by_id, settings.jitter, dataset)
        frame = score_samples(model, encoder, samples, run, dataset, settings, f"{dataset} {name}")
        write_parquet_atomic(outputs[name], frame)
        counts[name] = len(frame)
    n_eval = sum(counts.values())
    log.info(
        "%d image evaluations, %d encoder passes (%.3f per evaluated image), %d cache hits",
        n_eval,
        encoder.stats.encoded,
        encoder.stats.encoded / max(n_eval, 1),
        encoder.stats.cache_hits,
    )
    counts["encoder_passes"] = encoder.stats.encoded
    counts["cache_hits"] = encoder.stats.cache_hits
    return counts


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
    attack: Mapping[str, Any] | None = None,
    train_seed: int = 0,
) -> dict[str, int]:
    """One workflow job on one dataset: clean + perturbed metrics (``attack`` None) or FGSM + PGD.

    ``item``: one entry of :func:`medfm_robust.seg.workflow.job_plan` (``dataset``, ``test``, ``shards``,
    ``finetuned``, ``outputs``).
    """
    run = _plan_run(model, strategy, item, settings, train_seed)
    cfg = eval_settings(settings)
    dataset, test, shards = item["dataset"], item["test"], item["shards"]
    if attack is None:
        return evaluate_dataset(run, dataset, test, shards, item["outputs"], cfg)
    attack_cfg = attack_settings(attack)
    return evaluate_attacks(run, dataset, test, list(shards.values()), item["outputs"], cfg, attack_cfg)


def run_strategy_job(
    model: str,
    strategy: str,
    plan: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    attack: Mapping[str, Any],
    train_seed: int = 0,
) -> dict[str, dict[str, int]]:
    """One workflow job evaluating every dataset of ``plan`` with one (model, strategy, training seed).

    ``plan``: :func:`medfm_robust.seg.workflow.job_plan` with ``part='all'``; an item's ``outputs`` are
    ``clean``, each perturbation, and ``fgsm`` / ``pgd`` when attacks are on. Each dataset's model is
    loaded once and serves both the clean/perturbed evaluation and the attacks; ``zero_shot`` loads the
    base model once for every dataset.
    """
    cfg = eval_settings(settings)
    attack_cfg = attack_settings(attack)
    counts: dict[str, dict[str, int]] = {}
    base: PromptableSegmenter | None = None
    for item in plan:
        run = _plan_run(model, strategy, item, settings, train_seed)
        if run.finetuned is None:
            base = base if base is not None else prepare_model(run, cfg, None)[0]
            net = base
        else:
            net = prepare_model(run, cfg, None)[0]
        dataset, test, shards, outs = item["dataset"], item["test"], item["shards"], item["outputs"]
        scored = {n: p for n, p in outs.items() if n not in ATTACKS}
        counts[dataset] = evaluate_dataset(run, dataset, test, shards, scored, cfg, model=net)
        attack_outs = {n: p for n, p in outs.items() if n in ATTACKS}
        if attack_outs:
            counts[dataset].update(
                evaluate_attacks(
                    run, dataset, test, list(shards.values()), attack_outs, cfg, attack_cfg, model=net
                )
            )
    return counts
