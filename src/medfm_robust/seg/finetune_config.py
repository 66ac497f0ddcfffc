"""Torch-free fine-tuning configuration: strategy names and settings, per-run settings resolution, and
the helpers ``rules/finetune.smk`` (and the segmentation rules) call at DAG-building time.

Settings resolution (``config['finetune']``), later entries override earlier ones::

    train  <-  models.<m>.train  <-  strategies.<s>.train  <-  models.<m>.overrides.<s>.train

(structural keys :data:`STRUCTURE_KEYS` from ``strategies.<s>``, then ``models.<m>.overrides.<s>``).
The resolved mapping is exactly what one job receives as ``params``, so changing one strategy's settings
re-runs only that strategy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medfm_robust.config import deep_merge
from medfm_robust.errors import ConfigError

STRATEGIES: tuple[str, ...] = ("zero_shot", "full", "enc_only", "dec_only", "dec_prompt", "lora", "adapter")
TRAINED_STRATEGIES: tuple[str, ...] = STRATEGIES[1:]
PART_KEYS = ("train_decoder", "train_prompt_encoder", "train_adapters", "train_neck")
STRUCTURE_KEYS = ("unfreeze_last_blocks", "lora", *PART_KEYS)
# strategies whose trainable set may add the mask decoder / prompt encoder / every adapter, or (enc_only
# with unfreeze_last_blocks) leave out the encoder neck. Original code: Enc-Partial and Adapter also train
# decoder + prompt encoder, SAM-Med2D Enc-Partial also every adapter; Enc-Partial leaves the neck frozen.
OPTIONAL_PARTS: dict[str, tuple[str, ...]] = {
    "enc_only": ("train_decoder", "train_prompt_encoder", "train_adapters", "train_neck"),
    "adapter": ("train_decoder", "train_prompt_encoder"),
    "lora": ("train_decoder", "train_prompt_encoder"),
}
TINY_PRETRAINED = "results/checkpoints/tiny_sam/pretrained.safetensors"
OUTPUT_KINDS = {
    "checkpoint": ".safetensors",
    "sidecar": ".json",
    "history": "_history.csv",
    "curve": "_curve.png",
}


@dataclass(frozen=True)
class StrategySpec:
    """A strategy and its structural settings (training hyper-parameters live in the trainer's config)."""

    name: str
    unfreeze_last_blocks: int | None = None
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("qkv", "proj")
    train_decoder: bool | None = None
    train_prompt_encoder: bool | None = None
    train_adapters: bool | None = None
    train_neck: bool | None = None

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ConfigError(f"unknown fine-tuning strategy '{self.name}' (known: {', '.join(STRATEGIES)})")
        allowed = OPTIONAL_PARTS.get(self.name, ())
        for key in PART_KEYS:
            if getattr(self, key) is not None and key not in allowed:
                raise ConfigError(
                    f"strategy {self.name}: '{key}' is not a setting of this strategy "
                    f"(only of {', '.join(s for s, keys in OPTIONAL_PARTS.items() if key in keys)})"
                )
        if self.unfreeze_last_blocks is not None and self.unfreeze_last_blocks < 1:
            raise ConfigError(f"strategy {self.name}: unfreeze_last_blocks must be >= 1 or null")
        if self.lora_r < 1 or not 0 <= self.lora_dropout < 1 or not self.lora_targets:
            raise ConfigError(
                f"strategy {self.name}: invalid LoRA settings (r >= 1, 0 <= dropout < 1, targets)"
            )

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any] | None = None) -> StrategySpec:
        """Build from a strategy's config section; unrelated (training) keys are ignored."""
        cfg = cfg or {}
        lora = cfg.get("lora", {}) or {}
        return cls(
            name=name,
            unfreeze_last_blocks=cfg.get("unfreeze_last_blocks"),
            lora_r=int(lora.get("r", 16)),
            lora_alpha=float(lora.get("alpha", 32)),
            lora_dropout=float(lora.get("dropout", 0.1)),
            lora_targets=tuple(lora.get("targets", ("qkv", "proj"))),
            train_decoder=cfg.get("train_decoder"),
            train_prompt_encoder=cfg.get("train_prompt_encoder"),
            train_adapters=cfg.get("train_adapters"),
            train_neck=cfg.get("train_neck"),
        )

    def trains(self, part: str) -> bool:
        """Whether an optional part (a key of :data:`OPTIONAL_PARTS`' lists) is trained; ``train_neck``
        defaults to on (``enc_only`` trains the neck unless told otherwise), the others to off."""
        value = getattr(self, part)
        return (part == "train_neck") if value is None else bool(value)

    def structure(self) -> dict[str, Any]:
        """The settings that change the model's structure or trainable set (stored in sidecars)."""
        out: dict[str, Any] = {"name": self.name}
        if self.name == "enc_only":
            out["unfreeze_last_blocks"] = self.unfreeze_last_blocks
        if self.name == "lora":
            out["lora"] = {
                "r": self.lora_r,
                "alpha": self.lora_alpha,
                "dropout": self.lora_dropout,
                "targets": list(self.lora_targets),
            }
        out.update({key: self.trains(key) for key in OPTIONAL_PARTS.get(self.name, ())})
        return out


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
    if strategy not in TRAINED_STRATEGIES:
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
        ckpt = TINY_PRETRAINED
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
    seeds = (config.get("finetune") or {}).get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int | list) or not seeds:
        raise ConfigError(f"config key 'finetune.seeds': a count >= 1 or a list of seeds, got {seeds!r}")
    return list(range(seeds)) if isinstance(seeds, int) else sorted(int(s) for s in seeds)


def run_outputs(model: str, dataset: str, strategy: str, seed: int | str) -> dict[str, str]:
    """Checkpoint, sidecar, per-epoch CSV and loss/Dice curve of one run (``seed``: the training seed, or
    ``"{seed}"`` for a rule pattern)."""
    stem = f"results/checkpoints/{model}/{dataset}/{strategy}/seed{seed}"
    return {kind: stem + suffix for kind, suffix in OUTPUT_KINDS.items()}


def models_with_jobs_per(config: Mapping[str, Any], granularity: str) -> list[str]:
    """Fine-tuned models whose ``one_job_per`` is ``granularity`` (``dataset`` or ``strategy``)."""
    models = config["finetune"]["models"]
    return sorted(m for m in models if models[m]["one_job_per"] == granularity)


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


def final_targets(config: Mapping[str, Any], all_datasets: Sequence[str]) -> list[str]:
    """Every configured run's outputs, plus the pretrained tiny SAM when a stage uses it."""
    targets: list[str] = []
    for model in sorted(config["finetune"]["models"]):
        for dataset in model_datasets(config, model, all_datasets):
            for strategy in trained_strategies(config, model, dataset, all_datasets):
                for seed in train_seeds(config):
                    targets += list(run_outputs(model, dataset, strategy, seed).values())
    seg_models = (config.get("segmentation") or {}).get("models") or {}
    if "tiny_sam" in config["finetune"]["models"] or "tiny_sam" in seg_models:
        targets.append(TINY_PRETRAINED)
    return targets
