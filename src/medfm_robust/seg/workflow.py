"""Helpers of ``rules/segment.smk`` (kept here, torch-free and tested, so the rule file stays declarative).

Every function takes the validated config; none imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medfm_robust import paths
from medfm_robust.errors import ConfigError
from medfm_robust.seg.finetune_config import train_seeds, trained_strategies

ATTACK_OUTPUTS = ("fgsm", "pgd")
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


def output_names(config: Mapping[str, Any], model: str, dataset: str) -> list[str]:
    """Names of the evaluation job's Parquet files: ``clean`` and every evaluated perturbation."""
    return ["clean", *perturbations_for(config, model, dataset)]


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


def models_by_job(config: Mapping[str, Any], per: str) -> list[str]:
    """Configured models whose ``one_job_per`` is ``per`` (``dataset`` or ``strategy``)."""
    return [m for m in models(config) if config["segmentation"]["models"][m]["one_job_per"] == per]


#: which metric files a job writes: clean + perturbations, the attacks, or all of them (one-job-per-strategy)
JOB_PARTS = ("evaluate", "attack", "all")


def job_plan(
    config: Mapping[str, Any],
    model: str,
    datasets: Sequence[str],
    strategy: str = "{strategy}",
    seed: int | str = "{seed}",
    part: str = "all",
) -> list[dict[str, Any]]:
    """What one evaluation job of (model, strategy, training seed) reads and writes, dataset by dataset.

    Each item: ``dataset``; ``test`` (canonical test shard); ``shards`` (perturbation -> perturbed shard);
    ``finetuned`` (checkpoint, None for ``zero_shot``); ``outputs`` (metric name -> Parquet path: clean and
    the perturbations for ``part='evaluate'``, FGSM/PGD for ``attack``, all of them for ``all``). With the
    default ``strategy`` / ``seed`` the paths are rule patterns. Read by
    :func:`medfm_robust.seg.evaluate.run_strategy_job` / ``run_evaluation_job``.
    """
    if part not in JOB_PARTS:
        raise ValueError(f"part must be one of {JOB_PARTS}, got {part!r}")
    plan = []
    for d in datasets:
        names = {
            "evaluate": output_names(config, model, d),
            "attack": list(ATTACK_OUTPUTS),
            "all": metric_names(config, model, d),
        }[part]
        finetuned = finetuned_input(model, d, strategy, seed)
        plan.append(
            {
                "dataset": d,
                "test": paths.data_shard(d, "test"),
                "shards": {n: paths.perturbed_shard(d, n) for n in perturbations_for(config, model, d)},
                "finetuned": finetuned[0] if finetuned else None,
                "outputs": {n: paths.seg_metrics(model, strategy, seed, d, n) for n in names},
            }
        )
    return plan


def plan_inputs(plan: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The rule inputs of a :func:`job_plan`: test shards, perturbed shards, fine-tuned checkpoints."""
    return {
        "tests": [item["test"] for item in plan],
        "shards": [p for item in plan for p in item["shards"].values()],
        "finetuned": [item["finetuned"] for item in plan if item["finetuned"]],
    }


def plan_outputs(plan: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rule outputs of a :func:`job_plan` (every metric file, in plan order)."""
    return [p for item in plan for p in item["outputs"].values()]


def plan_for_wildcards(
    config: Mapping[str, Any], model: str, datasets: Sequence[str], part: str
) -> Callable[[Any], list[dict[str, Any]]]:
    """Rule input/params function: the :func:`job_plan` of the job's ``strategy`` and ``seed`` wildcards."""
    return lambda wildcards: job_plan(config, model, datasets, wildcards.strategy, wildcards.seed, part)


def inputs_for_wildcards(
    config: Mapping[str, Any], model: str, datasets: Sequence[str], part: str
) -> Callable[[Any], dict[str, list[str]]]:
    """Rule input function: :func:`plan_inputs` of the job's plan (for ``unpack``)."""
    plan = plan_for_wildcards(config, model, datasets, part)
    return lambda wildcards: plan_inputs(plan(wildcards))


def finetune_strategies(config: Mapping[str, Any]) -> TrainedFn:
    """The fine-tuning stage's trained strategies of a (model, dataset) (``finetune.models``)."""
    datasets = sorted(config["datasets"])
    return lambda model, dataset: trained_strategies(config, model, dataset, datasets)


def metric_names(config: Mapping[str, Any], model: str, dataset: str) -> list[str]:
    """Every metric file name of one evaluated run: clean, the perturbations, then the attacks if enabled."""
    attacks = ATTACK_OUTPUTS if config["segmentation"]["models"][model]["attacks"] else ()
    return [*output_names(config, model, dataset), *attacks]


def evaluated_runs(config: Mapping[str, Any], trained: TrainedFn | None) -> list[tuple[str, str, int, str]]:
    """Every evaluated (model, strategy, training seed, dataset), in target order."""
    runs = []
    for model in models(config):
        per_dataset = {d: strategies_for(config, model, d, trained) for d in datasets_for(config, model)}
        if model in models_by_job(config, "strategy") and len({tuple(v) for v in per_dataset.values()}) > 1:
            raise ConfigError(
                f"config key 'segmentation.models.{model}.one_job_per': 'strategy' needs the same strategies "
                f"on every dataset, got {per_dataset}"
            )
        for dataset, strategies in per_dataset.items():
            runs += [(model, s, seed, dataset) for s in strategies for seed in seeds_for(config, s)]
    return runs


def final_targets(config: Mapping[str, Any], trained: TrainedFn | None) -> list[str]:
    """Every metric Parquet of every configured (model, strategy, training seed, dataset)."""
    return [
        paths.seg_metrics(model, strategy, seed, dataset, name)
        for model, strategy, seed, dataset in evaluated_runs(config, trained)
        for name in metric_names(config, model, dataset)
    ]
