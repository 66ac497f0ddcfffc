"""Applying fine-tuning strategies to SAM-family models, and the trained state they produce.

The strategies themselves (what each trains, its settings and optional parts) are registered definitions
in :mod:`medfm_robust.seg.strategy_registry`; :func:`apply_strategy` runs a definition's freezing rule on
any model exposing ``image_encoder``, ``prompt_encoder`` and ``mask_decoder``
(``medfm_robust.seg.models.PromptableSegmenter``). The model parts they touch (encoder blocks, adapters,
LoRA targets) are found by :mod:`medfm_robust.seg.model_parts`.

Optional parts (``StrategyDef.optional_parts``): ``train_decoder`` / ``train_prompt_encoder`` add the mask
decoder / prompt encoder to ``enc_only``, ``adapter`` and ``lora``; ``train_adapters`` adds every adapter
module to ``enc_only`` (a model without adapters is then a ``ConfigError``); ``train_neck: false`` leaves
the neck of a partial ``enc_only`` frozen. The original code's variants: Enc-Partial = last 2 blocks (no
neck) + decoder + prompt encoder (+ every adapter on SAM-Med2D), Adapter = adapters + decoder + prompt
encoder.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from medfm_robust.errors import ConfigError
from medfm_robust.seg.model_parts import (
    LORA_ADAPTER_NAME,
    adapter_modules,
    encoder_blocks,
    ensure_adapters,
    inject_lora,
    lora_target_names,
    model_parts,
)
from medfm_robust.seg.strategy_registry import STRATEGIES, TRAINED_STRATEGIES, StrategySpec, get_strategy

__all__ = [
    "STRATEGIES",
    "TRAINED_STRATEGIES",
    "StrategyReport",
    "StrategySpec",
    "adapter_modules",
    "apply_strategy",
    "count_parameters",
    "encoder_blocks",
    "ensure_adapters",
    "inject_lora",
    "lora_target_names",
    "merge_lora",
    "parameter_table",
    "restore_trained_state",
    "set_train_mode",
    "trained_state",
]


@dataclass
class StrategyReport:
    """What :func:`apply_strategy` did."""

    strategy: str
    trainable_params: int
    total_params: int
    trainable_names: list[str] = field(default_factory=list)
    lora_modules: list[str] = field(default_factory=list)


def apply_strategy(model: nn.Module, spec: StrategySpec) -> StrategyReport:
    """Freeze ``model`` and unfreeze (or inject LoRA / insert adapters for) what ``spec`` trains, in place.

    LoRA factors and inserted adapters are initialised from the global torch RNG (seed it first).

    Returns:
        Trainable/total parameter counts and the trainable parameter names.
    """
    parts = model_parts(model)
    model.requires_grad_(False)
    lora_names = get_strategy(spec.name).freeze(model, spec, parts)
    if spec.trains("train_decoder"):
        parts[2].requires_grad_(True)
    if spec.trains("train_prompt_encoder"):
        parts[1].requires_grad_(True)
    trainable, total = count_parameters(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return StrategyReport(spec.name, trainable, total, names, lora_names)


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every peft LoRA layer into its base linear and remove the LoRA modules (in place)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` holds (unmerged) peft LoRA layers."""
    if "peft.tuners.lora" not in sys.modules:
        return False  # no LoRA layer exists before peft is imported (importing it costs seconds)
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared tensors counted once)."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total


def set_train_mode(model: nn.Module) -> nn.Module:
    """``model.train()`` except batch-norm layers with frozen parameters, which stay in ``eval()``.

    Frozen parts must not change: a batch-norm in train mode would update its running statistics (TinyViT has
    many), silently altering a "frozen" encoder.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in m.parameters()
        ):
            m.eval()
    return model


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a strategy changes: trainable parameters plus the running statistics of batch-norm layers
    whose parameters are trainable. LoRA factors are named without peft's adapter name
    (``...qkv.lora_A.weight``). Tensors are detached CPU copies."""
    out: dict[str, torch.Tensor] = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            out[_strip_adapter_name(n)] = p.detach().cpu().clone()
    for mname, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in m.parameters()):
            for bname, b in m.named_buffers(recurse=False):
                if b is not None:
                    out[f"{mname}.{bname}" if mname else bname] = b.detach().cpu().clone()
    return out


def _strip_adapter_name(name: str) -> str:
    for kind in ("lora_A", "lora_B"):
        name = name.replace(f".{kind}.{LORA_ADAPTER_NAME}.", f".{kind}.")
    return name


def _add_adapter_name(name: str) -> str:
    for kind in ("lora_A", "lora_B"):
        name = name.replace(f".{kind}.", f".{kind}.{LORA_ADAPTER_NAME}.")
    return name


def trained_tensor_targets(model: nn.Module) -> dict[str, torch.Tensor]:
    """Map the names used by :func:`trained_state` to the live tensors of ``model`` (for loading)."""
    live = dict(model.named_parameters())
    live.update(dict(model.named_buffers()))
    return {_strip_adapter_name(n): t for n, t in live.items()}


def restore_trained_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copy ``state`` (names as in :func:`trained_state`) into ``model``'s tensors.

    Raises:
        CheckpointError: a key has no tensor in the model, or a shape differs (names the keys and ``source``).
    """
    from medfm_robust.errors import CheckpointError

    targets = trained_tensor_targets(model)
    unexpected = sorted(k for k in state if k not in targets)
    if unexpected:
        raise CheckpointError(f"{source}: unexpected keys for this model/strategy: {unexpected[:10]}")
    bad = sorted(k for k, v in state.items() if tuple(v.shape) != tuple(targets[k].shape))
    if bad:
        detail = [f"{k} {tuple(state[k].shape)} vs {tuple(targets[k].shape)}" for k in bad[:10]]
        raise CheckpointError(f"{source}: shape mismatch: {detail}")
    with torch.no_grad():
        for k, v in state.items():
            targets[k].copy_(v.to(targets[k].device, targets[k].dtype))


def parameter_table(
    model_names: Sequence[str],
    strategies: Sequence[str] = STRATEGIES,
    ft_cfg: Mapping[str, object] | None = None,
) -> list[dict[str, object]]:
    """Trainable/total parameter counts of each (model, strategy), from freshly built structures (ViT-B
    models on the ``meta`` device; no weights, no downloads). ``ft_cfg`` (a ``finetune`` config section)
    gives the strategies' structural settings (e.g. ``enc_only`` with decoder and prompt encoder); without
    it, each strategy's bare definition. Combinations that are configuration errors (``adapter`` without
    adapters) get ``trainable_params=None`` and the error message as ``note``."""

    from medfm_robust.seg.finetune_config import strategy_structure
    from medfm_robust.seg.models import MODEL_SPECS

    rows: list[dict[str, object]] = []
    for name in model_names:
        for strategy in strategies:
            spec = MODEL_SPECS[name]
            with torch.device("meta" if spec.family == "sam_vit_b" else "cpu"):
                model = spec.builder()
            try:
                struct = strategy_structure(ft_cfg, name, strategy) if ft_cfg else {}
                report = apply_strategy(model, StrategySpec.from_config(strategy, struct))
            except ConfigError as exc:
                rows.append(
                    {
                        "model": name,
                        "strategy": strategy,
                        "trainable_params": None,
                        "total_params": count_parameters(model)[1],
                        "note": str(exc),
                    }
                )
                continue
            rows.append(
                {
                    "model": name,
                    "strategy": strategy,
                    "trainable_params": report.trainable_params,
                    "total_params": report.total_params,
                    "note": "",
                }
            )
    return rows
