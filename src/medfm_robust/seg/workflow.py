"""Helpers of ``rules/segment.smk`` (kept here, torch-free and tested, so the rule file stays declarative).

Every function takes the validated config; none imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medfm_robust import paths
from medfm_robust.errors import ConfigError
from medfm_robust.seg.finetune_config import train_seeds, trained_strategies

#: ``seed``: the training seed (``finetune.seeds``); ``zero_shot`` is not trained and is evaluated once, as
#: seed 0.
TrainedFn = Callable[[str, str], Sequence[str]]


def models(config: Mapping[str, Any]) -> list[str]:
    """Configured segmentation models, sorted."""
    return sorted(config["segmentation"]["models"])


def datasets_for(config: Mapping[str, Any], model: str) -> list[str]:
    """Datasets evaluated with ``model``: its ``datasets`` list, or every configured dataset."""
    known = sorted(config["datasets"])
    chosen = config["segmentation"]["models"][model]["datasets"]
    if chosen is None:
        return known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise ConfigError(f"config key 'segmentation.models.{model}.datasets': unknown dataset(s) {unknown}")
    return sorted(chosen)


def perturbations_for(config: Mapping[str, Any], model: str, dataset: str) -> list[str]:
    """Perturbation shards of ``dataset`` that ``model`` is evaluated on (the dataset's types, optionally
    restricted by ``segmentation.models.<model>.perturbations``), sorted."""
    from medfm_robust.perturb import REGISTRY
    from medfm_robust.perturb.workflow import types_for

    types = types_for(config, dataset)
    chosen = config["segmentation"]["models"][model]["perturbations"]
    if chosen is None:
        return sorted(types)
    unknown = sorted(set(chosen) - set(REGISTRY))
    if unknown:
        key = f"segmentation.models.{model}.perturbations"
        raise ConfigError(f"config key '{key}': unknown perturbation type(s) {unknown}")
    return sorted(t for t in types if t in chosen)


def strategies_for(
    config: Mapping[str, Any], model: str, dataset: str, trained: TrainedFn | None
) -> list[str]:
    """Strategies evaluated: the model's ``strategies`` list, or ``zero_shot`` plus what ``trained(model,
    dataset)`` (the finetune stage's ``finetune_strategies``) returns."""
    chosen = config["segmentation"]["models"][model]["strategies"]
    if chosen is None:
        chosen = ["zero_shot", *(trained(model, dataset) if trained is not None else [])]
    return list(dict.fromkeys(chosen))


def base_checkpoint_input(config: Mapping[str, Any], model: str) -> list[str]:
    """The base checkpoint as an input file (none for random weights or the bundled LiteMedSAM)."""
    ckpt = config["segmentation"]["models"][model]["checkpoint"]
    return [] if ckpt in (None, "bundled") else [str(ckpt)]


def finetuned_input(model: str, dataset: str, strategy: str, seed: int | str) -> list[str]:
    """The fine-tuned checkpoint of a trained strategy and training seed (none for ``zero_shot``)."""
    if strategy == "zero_shot":
        return []
    return [paths.checkpoint(model, dataset, strategy, seed)]


def seeds_for(config: Mapping[str, Any], strategy: str) -> list[int]:
    """Training seeds evaluated for ``strategy``: ``finetune.seeds``, or ``[0]`` for ``zero_shot``."""
    return [0] if strategy == "zero_shot" else train_seeds(config)


def job_params(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Only the settings an evaluation job of ``model`` depends on (read by
    :func:`medfm_robust.seg.evaluate.eval_settings`)."""
    seg = config["segmentation"]
    mcfg = seg["models"][model]
    return {
        "checkpoint": mcfg["checkpoint"],
        "batch_size": mcfg["batch_size"],
        "max_images": mcfg["max_images"],
        "attack_max_images": mcfg["attack_max_images"],
        "cache_dir": seg["cache_dir"] if mcfg["embedding_cache"] else None,
        "device": seg["device"],
        "threads": mcfg["threads"],
        "box_jitter": seg["box_jitter"],
        "nsd_tolerance": seg["nsd_tolerance"],
        "seed": config["seed"],
    }


def attacked(config: Mapping[str, Any], model: str) -> bool:
    """Whether ``model``'s evaluations include FGSM and PGD (``segmentation.models.<m>.attacks``)."""
    return bool(config["segmentation"]["models"][model]["attacks"])


def attack_params(config: Mapping[str, Any], model: str) -> dict[str, Any] | None:
    """The ``segmentation.attacks`` settings when ``model`` is attacked, else None (so that they are not a
    parameter of, and do not re-run, the jobs of models that are not attacked)."""
    return dict(config["segmentation"]["attacks"]) if attacked(config, model) else None


def job_plan(
    config: Mapping[str, Any],
    model: str,
    dataset: str,
    strategy: str = "{strategy}",
    seed: int | str = "{seed}",
) -> dict[str, Any]:
    """What the evaluation job of one (model, strategy, training seed, dataset) reads and writes.

    Keys: ``dataset``; ``test`` (canonical test shard); ``shards`` (perturbation -> perturbed shard);
    ``finetuned`` (checkpoint, None for ``zero_shot``); ``attacks`` (whether FGSM / PGD run); ``output``
    (the metrics Parquet). With the default ``strategy`` / ``seed`` the paths are rule patterns. Read by
    :func:`medfm_robust.seg.evaluate.run_evaluation_job`.
    """
    finetuned = finetuned_input(model, dataset, strategy, seed)
    return {
        "dataset": dataset,
        "test": paths.data_shard(dataset, "test"),
        "shards": {n: paths.perturbed_shard(dataset, n) for n in perturbations_for(config, model, dataset)},
        "finetuned": finetuned[0] if finetuned else None,
        "attacks": attacked(config, model),
        "output": paths.seg_metrics(model, strategy, seed, dataset),
    }


def check_plans(config: Mapping[str, Any]) -> None:
    """Build the :func:`job_plan` of every configured (model, dataset) pattern, so that a bad model
    setting (unknown dataset or perturbation) stops the workflow at parse time with its config key.

    Raises:
        ConfigError: naming the key.
    """
    for model in models(config):
        for dataset in datasets_for(config, model):
            job_plan(config, model, dataset)


def plan_inputs(plan: Mapping[str, Any]) -> dict[str, list[str]]:
    """The rule inputs of a :func:`job_plan`: test shard, perturbed shards, fine-tuned checkpoint."""
    return {
        "tests": [plan["test"]],
        "shards": list(plan["shards"].values()),
        "finetuned": [plan["finetuned"]] if plan["finetuned"] else [],
    }


def wildcard_plan(config: Mapping[str, Any], wildcards: Any) -> dict[str, Any]:
    """The :func:`job_plan` of a job's ``model``, ``dataset``, ``strategy`` and ``seed`` wildcards."""
    w = wildcards
    return job_plan(config, w.model, w.dataset, w.strategy, w.seed)


def finetune_strategies(config: Mapping[str, Any]) -> TrainedFn:
    """The fine-tuning stage's trained strategies of a (model, dataset) (``finetune.models``)."""
    datasets = sorted(config["datasets"])
    return lambda model, dataset: trained_strategies(config, model, dataset, datasets)


def evaluated_runs(config: Mapping[str, Any], trained: TrainedFn | None) -> list[tuple[str, str, int, str]]:
    """Every evaluated (model, strategy, training seed, dataset), in target order."""
    return [
        (model, s, seed, dataset)
        for model in models(config)
        for dataset in datasets_for(config, model)
        for s in strategies_for(config, model, dataset, trained)
        for seed in seeds_for(config, s)
    ]


def final_targets(config: Mapping[str, Any], trained: TrainedFn | None) -> list[str]:
    """The metrics Parquet of every configured (model, strategy, training seed, dataset)."""
    return [paths.seg_metrics(*run) for run in evaluated_runs(config, trained)]
