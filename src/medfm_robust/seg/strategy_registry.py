"""The fine-tuning strategy registry: one decorated freezing rule per strategy, carrying its metadata.

A strategy is registered with :func:`register_strategy` on its freezing rule ``freeze(model, spec, parts)``
(``parts``: image encoder, prompt encoder, mask decoder), which unfreezes (or injects LoRA into, or inserts
adapters into) what the strategy trains on a fully frozen model and returns the LoRA module names (else
``[]``). The definition also owns the settings it reports (``structure``, stored in checkpoint sidecars), its
optional parts and its display label and colour. The schema's strategy enums, the palette and the
workflow's wildcard constraints derive from or are tested against :data:`STRATEGY_SPECS`. Torch-free: the
rules run at training time and import torch where they use it (:mod:`medfm_robust.seg.model_parts`).

============  ============================================================================================
zero_shot     nothing trained
full          image encoder + prompt encoder + mask decoder
enc_only      image encoder (``unfreeze_last_blocks: N``: only the last N encoder blocks plus the neck)
dec_only      mask decoder
dec_prompt    mask decoder + prompt encoder
lora          peft LoRA on the image encoder blocks' attention ``qkv`` and ``proj`` linears (r 16, alpha 32,
              dropout 0.1 by default; targets configurable); all base weights frozen
adapter       only the adapter modules of the image encoder blocks (SAM-Med2D's ``Adapter``); a model
              without adapters (and no ``insert_adapters`` hook in its definition) is a ``ConfigError``
============  ============================================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medfm_robust.errors import ConfigError
from medfm_robust.named_registry import NamedRegistry
from medfm_robust.seg import model_parts as mp

if TYPE_CHECKING:
    from torch import nn

    Parts = tuple[nn.Module, nn.Module, nn.Module]
Freeze = Callable[..., list[str]]
PART_KEYS = ("train_decoder", "train_prompt_encoder", "train_adapters", "train_neck")


@dataclass(frozen=True)
class StrategyDef:
    """Metadata and freezing rule of one registered strategy.

    ``optional_parts``: the :data:`PART_KEYS` this strategy accepts (``train_decoder`` /
    ``train_prompt_encoder`` add the mask decoder / prompt encoder, ``train_adapters`` every adapter,
    ``train_neck: false`` leaves the neck of a partial encoder frozen). ``settings(spec)``: the strategy's
    own structural settings reported in :meth:`structure`.
    """

    name: str
    label: str
    colour: str
    trained: bool
    optional_parts: tuple[str, ...]
    description: str
    freeze: Freeze = field(repr=False, compare=False)
    settings: Callable[[StrategySpec], dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def structure(self, spec: StrategySpec) -> dict[str, Any]:
        """The settings that change the model's structure or trainable set (stored in sidecars)."""
        out: dict[str, Any] = {"name": self.name}
        if self.settings is not None:
            out.update(self.settings(spec))
        out.update({key: spec.trains(key) for key in self.optional_parts})
        return out


STRATEGY_SPECS: NamedRegistry[StrategyDef] = NamedRegistry("fine-tuning strategy")


def register_strategy(
    name: str,
    *,
    label: str,
    colour: str,
    trained: bool = True,
    optional_parts: tuple[str, ...] = (),
    settings: Callable[[StrategySpec], dict[str, Any]] | None = None,
) -> Callable[[Freeze], Freeze]:
    """Decorator registering ``freeze(model, spec, parts) -> lora_names`` as strategy ``name``; its
    docstring's first paragraph is the description."""
    unknown = [k for k in optional_parts if k not in PART_KEYS]
    if unknown:
        raise ValueError(f"strategy {name!r}: unknown optional parts {unknown}")

    def deco(fn: Freeze) -> Freeze:
        doc = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        STRATEGY_SPECS.add(name, StrategyDef(name, label, colour, trained, optional_parts, doc, fn, settings))
        return fn

    return deco


def get_strategy(name: str) -> StrategyDef:
    """The definition of ``name``: the one place strategy names are validated (``ConfigError`` listing the
    known ones)."""
    return STRATEGY_SPECS.lookup(name)


# ---------------------------------------------------------------------------------------------------------
# The strategies (registration order is the paper's order)


@register_strategy("zero_shot", label="Zero-shot", colour="#7f7f7f", trained=False)
def _zero_shot(model: nn.Module, spec: StrategySpec, parts: Parts) -> list[str]:
    """Nothing trained: the base weights are evaluated as they are."""
    return []


@register_strategy("full", label="Full", colour="#1f77b4")
def _full(model: nn.Module, spec: StrategySpec, parts: Parts) -> list[str]:
    """Image encoder + prompt encoder + mask decoder."""
    model.requires_grad_(True)
    return []


def _enc_only_settings(spec: StrategySpec) -> dict[str, Any]:
    return {"unfreeze_last_blocks": spec.unfreeze_last_blocks}


@register_strategy("enc_only", label="Enc-Only", colour="#2ca02c", optional_parts=PART_KEYS,
                   settings=_enc_only_settings)
def _enc_only(model: nn.Module, spec: StrategySpec, parts: Parts) -> list[str]:
    """Image encoder (``unfreeze_last_blocks: N``: only the last N encoder blocks plus the neck)."""
    encoder = parts[0]
    if spec.unfreeze_last_blocks is None:
        encoder.requires_grad_(True)
    else:
        blocks = mp.encoder_blocks(encoder)
        if spec.unfreeze_last_blocks > len(blocks):
            raise ConfigError(
                f"finetune enc_only unfreeze_last_blocks={spec.unfreeze_last_blocks} but the encoder has "
                f"{len(blocks)} blocks"
            )
        for block in blocks[-spec.unfreeze_last_blocks :]:
            block.requires_grad_(True)
        neck = getattr(encoder, "neck", None)
        if neck is not None and spec.trains("train_neck"):
            neck.requires_grad_(True)
    if spec.trains("train_adapters"):
        found = mp.adapter_modules(model)
        if not found:
            name = getattr(model, "name", type(model).__name__)
            raise ConfigError(f"finetune enc_only train_adapters: model '{name}' has no adapter modules")
        for a in found:
            a.requires_grad_(True)
    return []


@register_strategy("dec_only", label="Dec-Only", colour="#ff7f0e")
def _dec_only(model: nn.Module, spec: StrategySpec, parts: Parts) -> list[str]:
    """Mask decoder."""
    parts[2].requires_grad_(True)
    return []


@register_strategy("dec_prompt", label="Dec-Prompt", colour="#9467bd")
def _dec_prompt(model: nn.Module, spec: StrategySpec, parts: Parts) -> list[str]:
    """Mask decoder + prompt encoder."""
    parts[2].requires_grad_(True)
    parts[1].requires_grad_(True)
    return []


def _lora_settings(spec: StrategySpec) -> dict[str, Any]:
    return {"lora": {"r": spec.lora_r, "alpha": spec.lora_alpha, "dropout": spec.lora_dropout,
                     "targets": list(spec.lora_targets)}}


@register_strategy("lora", label="LoRA", colour="#d62728",
                   optional_parts=("train_decoder", "train_prompt_encoder"), settings=_lora_settings)
def _lora(model: nn.Module, spec: StrategySpec, parts: Parts) -> list[str]:
    """peft LoRA on the image encoder blocks' linears (``lora.targets``); all base weights frozen."""
    return mp.inject_lora(model, spec)


@register_strategy("adapter", label="Adapter", colour="#8c564b",
                   optional_parts=("train_decoder", "train_prompt_encoder"))
def _adapter(model: nn.Module, spec: StrategySpec, parts: Parts) -> list[str]:
    """Only the adapter modules of the image encoder blocks (inserted first where the model's definition
    can insert them)."""
    mp.ensure_adapters(model)
    model.requires_grad_(False)
    for a in mp.adapter_modules(model):
        a.requires_grad_(True)
    return []


STRATEGIES: tuple[str, ...] = tuple(STRATEGY_SPECS)
TRAINED_STRATEGIES: tuple[str, ...] = tuple(n for n, s in STRATEGY_SPECS.items() if s.trained)
STRUCTURE_KEYS = ("unfreeze_last_blocks", "lora", *PART_KEYS)


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
        allowed = get_strategy(self.name).optional_parts
        for key in PART_KEYS:
            if getattr(self, key) is not None and key not in allowed:
                owners = [s for s, d in STRATEGY_SPECS.items() if key in d.optional_parts]
                raise ConfigError(f"strategy {self.name}: '{key}' is not a setting of this strategy "
                                  f"(only of {', '.join(owners)})")
        if self.unfreeze_last_blocks is not None and self.unfreeze_last_blocks < 1:
            raise ConfigError(f"strategy {self.name}: unfreeze_last_blocks must be >= 1 or null")
        if self.lora_r < 1 or not 0 <= self.lora_dropout < 1 or not self.lora_targets:
            raise ConfigError(
                f"strategy {self.name}: invalid LoRA settings (r >= 1, 0 <= dropout < 1, targets)"
            )

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any] | None = None) -> StrategySpec:
        """Build from a strategy's config section; unrelated (training) keys are ignored, LoRA settings the
        section does not give keep this class's defaults (the schema's)."""
        cfg = cfg or {}
        lora = cfg.get("lora") or {}
        kinds = {"r": ("lora_r", int), "alpha": ("lora_alpha", float), "dropout": ("lora_dropout", float),
                 "targets": ("lora_targets", tuple)}
        given = {field_: kind(lora[key]) for key, (field_, kind) in kinds.items() if key in lora}
        return cls(
            name=name,
            unfreeze_last_blocks=cfg.get("unfreeze_last_blocks"),
            **given,
            train_decoder=cfg.get("train_decoder"),
            train_prompt_encoder=cfg.get("train_prompt_encoder"),
            train_adapters=cfg.get("train_adapters"),
            train_neck=cfg.get("train_neck"),
        )

    @property
    def definition(self) -> StrategyDef:
        """The registered definition of this strategy."""
        return STRATEGY_SPECS[self.name]

    def trains(self, part: str) -> bool:
        """Whether an optional part (one of :data:`PART_KEYS`) is trained; ``train_neck`` defaults to on
        (``enc_only`` trains the neck unless told otherwise), the others to off."""
        value = getattr(self, part)
        return (part == "train_neck") if value is None else bool(value)

    def structure(self) -> dict[str, Any]:
        """The settings that change the model's structure or trainable set (stored in sidecars)."""
        return self.definition.structure(self)
