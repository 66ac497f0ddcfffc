"""Helpers of ``rules/segment.smk`` (kept here, torch-free and tested, so the rule file stays declarative).

Every function takes the validated config; none imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medfm_robust.errors import ConfigError
from medfm_robust.seg.finetune_config import run_outputs, train_seeds

ATTACK_OUTPUTS = ("fgsm", "pgd")
#: ``seed``: the training seed (``finetune.seeds``); ``zero_shot`` is not trained and is evaluated once, as
#: seed 0.
METRICS_PATTERN = "results/metrics/segmentation/{model}/{strategy}/seed{seed}/{dataset}/{name}.parquet"
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
    return [run_outputs(model, dataset, strategy, seed)["checkpoint"]]


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


def strategy_job_layout(config: Mapping[str, Any], model: str) -> list[dict[str, Any]]:
    """What the one-job-per-strategy job of ``model`` evaluates, dataset by dataset (see
    :func:`medfm_robust.seg.evaluate.run_strategy_job`)."""
    attacks = bool(config["segmentation"]["models"][model]["attacks"])
    return [
        {"dataset": d, "perturbations": perturbations_for(config, model, d), "attacks": attacks}
        for d in datasets_for(config, model)
    ]


def strategy_job_tests(config: Mapping[str, Any], model: str) -> list[str]:
    """Test shards of the job's datasets, in layout order."""
    return [f"results/data/{d}/test.parquet" for d in datasets_for(config, model)]


def strategy_job_shards(config: Mapping[str, Any], model: str) -> list[str]:
    """Perturbed shards of the job's datasets, in layout order."""
    return [
        f"results/perturbed/{item['dataset']}/{n}.parquet"
        for item in strategy_job_layout(config, model)
        for n in item["perturbations"]
    ]


def strategy_job_finetuned(
    config: Mapping[str, Any], model: str, strategy: str, seed: int | str
) -> list[str]:
    """Fine-tuned checkpoints of the job's datasets, in layout order (none for ``zero_shot``)."""
    return [p for d in datasets_for(config, model) for p in finetuned_input(model, d, strategy, seed)]


def strategy_job_outputs(config: Mapping[str, Any], model: str) -> list[str]:
    """Output patterns (with ``{strategy}`` and ``{seed}`` wildcards) of the job, in layout order."""
    out = []
    for item in strategy_job_layout(config, model):
        names = ["clean", *item["perturbations"], *(ATTACK_OUTPUTS if item["attacks"] else ())]
        out += [
            METRICS_PATTERN.format(
                model=model, strategy="{strategy}", seed="{seed}", dataset=item["dataset"], name=n
            )
            for n in names
        ]
    return out


def final_targets(config: Mapping[str, Any], trained: TrainedFn | None) -> list[str]:
    """Every metric Parquet of every configured (model, strategy, training seed, dataset)."""
    targets = []
    for model in models(config):
        per_dataset = {d: strategies_for(config, model, d, trained) for d in datasets_for(config, model)}
        if model in models_by_job(config, "strategy") and len({tuple(v) for v in per_dataset.values()}) > 1:
            raise ConfigError(
                f"config key 'segmentation.models.{model}.one_job_per': 'strategy' needs the same strategies "
                f"on every dataset, got {per_dataset}"
            )
        for dataset in datasets_for(config, model):
            names = output_names(config, model, dataset)
            if config["segmentation"]["models"][model]["attacks"]:
                names += ATTACK_OUTPUTS
            for strategy in per_dataset[dataset]:
                targets += [
                    METRICS_PATTERN.format(
                        model=model, strategy=strategy, seed=seed, dataset=dataset, name=name
                    )
                    for seed in seeds_for(config, strategy)
                    for name in names
                ]
    return targets
