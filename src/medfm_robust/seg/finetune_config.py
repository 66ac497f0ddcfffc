"""Torch-free fine-tuning configuration: per-run settings resolution (the strategies and their settings
are defined in :mod:`medfm_robust.seg.strategy_registry`), and the helpers ``rules/finetune.smk`` (and the
segmentation rules) call at DAG-building time.

Settings resolution (``config['finetune']``), later entries override earlier ones::

    train  <-  models.<m>.train  <-  strategies.<s>.train  <-  models.<m>.overrides.<s>.train

(structural keys :data:`STRUCTURE_KEYS` from ``strategies.<s>``, then ``models.<m>.overrides.<s>``).
The resolved mapping is exactly what one job receives as ``params``, so changing one strategy's settings
re-runs only that strategy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medfm_robust import paths
from medfm_robust.config import deep_merge, with_defaults
from medfm_robust.errors import ConfigError
from medfm_robust.seg.strategy_registry import (  # noqa: F401 (re-exported: the rules' and trainer's names)
    STRATEGIES,
    STRUCTURE_KEYS,
    TRAINED_STRATEGIES,
    StrategySpec,
    get_strategy,
)


def strategy_structure(ft_cfg: Mapping[str, Any], model: str, strategy: str) -> dict[str, Any]:
    """Structural settings of ``strategy`` for ``model``: ``strategies.<s>`` then
    ``models.<m>.overrides.<s>`` (the model need not be configured: then the shared settings only)."""
    scfg = (ft_cfg.get("strategies", {}) or {}).get(strategy, {}) or {}
    mcfg = (ft_cfg.get("models", {}) or {}).get(model, {}) or {}
    mscfg = (mcfg.get("overrides", {}) or {}).get(strategy, {}) or {}
    struct = {k: scfg[k] for k in STRUCTURE_KEYS if k in scfg}
    return deep_merge(struct, {k: mscfg[k] for k in STRUCTURE_KEYS if k in mscfg})


def run_settings(ft_cfg: Mapping[str, Any], model: str, strategy: str) -> dict[str, Any]:
    """Resolved settings of one (model, strategy): ``{"train": {...}, "strategy": {...}}``.

    Raises:
        ConfigError: unknown strategy, or a model not configured under ``finetune.models``.
    """
    if not get_strategy(strategy).trained:
        raise ConfigError(
            f"finetune: '{strategy}' is not a trained strategy ({', '.join(TRAINED_STRATEGIES)})"
        )
    models = ft_cfg.get("models", {}) or {}
    if model not in models:
        raise ConfigError(f"config key 'finetune.models.{model}': model not configured for fine-tuning")
    mcfg = models[model] or {}
    scfg = (ft_cfg.get("strategies", {}) or {}).get(strategy, {}) or {}
    mscfg = (mcfg.get("overrides", {}) or {}).get(strategy, {}) or {}
    train_cfg = deep_merge(ft_cfg.get("train", {}) or {}, mcfg.get("train", {}) or {})
    train_cfg = deep_merge(train_cfg, scfg.get("train", {}) or {})
    train_cfg = deep_merge(train_cfg, mscfg.get("train", {}) or {})
    spec = StrategySpec.from_config(strategy, strategy_structure(ft_cfg, model, strategy))
    return {"train": train_cfg, "strategy": spec.structure()}


# ---------------------------------------------------------------------------------------------------------
# Rule helpers (rules/finetune.smk)


def model_datasets(config: Mapping[str, Any], model: str, all_datasets: Sequence[str]) -> list[str]:
    """Datasets ``model`` is fine-tuned on (its ``datasets`` list, or every configured dataset)."""
    chosen = config["finetune"]["models"][model]["datasets"]
    if chosen is None:
        return list(all_datasets)
    unknown = sorted(set(chosen) - set(all_datasets))
    if unknown:
        raise ConfigError(f"config key 'finetune.models.{model}.datasets': unknown dataset(s) {unknown}")
    return sorted(chosen)


def trained_strategies(
    config: Mapping[str, Any], model: str, dataset: str, all_datasets: Sequence[str]
) -> list[str]:
    """Strategies trained for (model, dataset) (empty when the model is not fine-tuned there)."""
    models = config["finetune"]["models"]
    if model not in models or dataset not in model_datasets(config, model, all_datasets):
        return []
    return [s for s in models[model]["strategies"] if s != "zero_shot"]


def base_checkpoint(config: Mapping[str, Any], model: str) -> str:
    """Base weights: ``finetune.models.<m>.checkpoint``, else ``segmentation.models.<m>.checkpoint``, else
    (tiny_sam) the workflow's pretrained file."""
    ckpt = config["finetune"]["models"][model]["checkpoint"]
    if ckpt is None:
        ckpt = ((config.get("segmentation") or {}).get("models") or {}).get(model, {}).get("checkpoint")
    if ckpt is None and model == "tiny_sam":
        ckpt = paths.tiny_sam_pretrained()
    if ckpt is None:
        raise ConfigError(
            f"config key 'finetune.models.{model}.checkpoint': base weights needed to fine-tune"
        )
    return str(ckpt)


def base_input(config: Mapping[str, Any], model: str) -> list[str]:
    """The base checkpoint as an input file (none for the bundled LiteMedSAM)."""
    ckpt = base_checkpoint(config, model)
    return [] if ckpt == "bundled" else [ckpt]


def job_params(config: Mapping[str, Any], model: str, strategy: str) -> dict[str, Any]:
    """Only what a (model, strategy) job depends on: the strategy's resolved settings + model settings."""
    ft = config["finetune"]
    return {
        **run_settings(ft, model, strategy),
        "checkpoint": base_checkpoint(config, model),
        "device": ft["device"],
        "keep_state": ft["keep_state"],
        "seed": config["seed"],
    }


def train_seeds(config: Mapping[str, Any]) -> list[int]:
    """Training seeds of every (model, dataset, strategy): ``finetune.seeds`` as a count n (seeds 0..n-1)
    or an explicit list (sorted)."""
    seeds = with_defaults("finetune", config.get("finetune"))["seeds"]
    if isinstance(seeds, bool) or not isinstance(seeds, int | list) or not seeds:
        raise ConfigError(f"config key 'finetune.seeds': a count >= 1 or a list of seeds, got {seeds!r}")
    return list(range(seeds)) if isinstance(seeds, int) else sorted(int(s) for s in seeds)


def pretrain_datasets(config: Mapping[str, Any], all_datasets: Sequence[str]) -> list[str]:
    """Datasets whose train/val splits pretrain tiny SAM."""
    chosen = config["finetune"]["pretrain_tiny_sam"]["datasets"]
    if chosen is None:
        return list(all_datasets)
    unknown = sorted(set(chosen) - set(all_datasets))
    if unknown:
        raise ConfigError(f"config key 'finetune.pretrain_tiny_sam.datasets': unknown dataset(s) {unknown}")
    return sorted(chosen)


def pretrain_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """Settings of the pretraining job."""
    pre = config["finetune"]["pretrain_tiny_sam"]
    return {**pre["train"], "attention_init_gain": pre["attention_init_gain"]}


def trained_runs(config: Mapping[str, Any], all_datasets: Sequence[str]) -> list[tuple[str, str, str, int]]:
    """Every configured fine-tuning run as (model, dataset, strategy, training seed)."""
    return [
        (model, dataset, strategy, seed)
        for model in sorted(config["finetune"]["models"])
        for dataset in model_datasets(config, model, all_datasets)
        for strategy in trained_strategies(config, model, dataset, all_datasets)
        for seed in train_seeds(config)
    ]


def final_targets(config: Mapping[str, Any], all_datasets: Sequence[str]) -> list[str]:
    """Every configured run's outputs, plus the pretrained tiny SAM when a stage uses it."""
    targets: list[str] = []
    for run in trained_runs(config, all_datasets):
        targets += list(paths.run_outputs(*run).values())
    seg_models = (config.get("segmentation") or {}).get("models") or {}
    if "tiny_sam" in config["finetune"]["models"] or "tiny_sam" in seg_models:
        targets.append(paths.tiny_sam_pretrained())
    return targets
