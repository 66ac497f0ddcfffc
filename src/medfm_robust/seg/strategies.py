"""Fine-tuning strategies: which tensors of a SAM-family model are trained.

One definition for every model that exposes ``image_encoder``, ``prompt_encoder`` and ``mask_decoder``
(``medfm_robust.seg.models.PromptableSegmenter``):

============  ============================================================================================
zero_shot     nothing trained
full          image encoder + prompt encoder + mask decoder
enc_only      image encoder (``unfreeze_last_blocks: N``: only the last N encoder blocks plus the neck)
dec_only      mask decoder
dec_prompt    mask decoder + prompt encoder
lora          peft LoRA on the image encoder blocks' attention ``qkv`` and ``proj`` linears (r 16, alpha 32,
              dropout 0.1 by default; targets configurable); all base weights frozen
adapter       only the adapter modules of the image encoder blocks (SAM-Med2D's ``Adapter``); a model
              without adapters is a :class:`ConfigError`
============  ============================================================================================

Optional parts (``finetune_config.OPTIONAL_PARTS``): ``train_decoder`` / ``train_prompt_encoder`` add the
mask decoder / prompt encoder to ``enc_only``, ``adapter`` and ``lora``; ``train_adapters`` adds every
adapter module to ``enc_only`` (a model without adapters is then a :class:`ConfigError`); ``train_neck:
false`` leaves the neck of a partial ``enc_only`` frozen. The original code's variants: Enc-Partial = last 2
blocks (no neck) + decoder + prompt encoder (+ every adapter on SAM-Med2D), Adapter = adapters + decoder +
prompt encoder.

Adapters: ``sam_med2d`` has them natively. ``tiny_sam`` gets the same design (SAM-Med2D's parallel adapter
beside each block's MLP) inserted by :func:`ensure_adapters` with its output LayerNorm zero-initialised, so
the inserted adapters start as an exact no-op on the pretrained model. Models listed in
:data:`ADAPTER_INSERTABLE` get adapters this way; any other model without adapters is a configuration error.

Encoder blocks are ``image_encoder.blocks`` (SAM ViT) or the concatenation of
``image_encoder.layers[*].blocks`` (TinyViT, LiteMedSAM). LoRA targets are matched *inside these blocks
only*, so a ViT's ``patch_embed.proj`` convolution is never a target (the original SAM-Med2D LoRA hit it).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from medfm_robust.errors import ConfigError
from medfm_robust.seg.finetune_config import STRATEGIES, TRAINED_STRATEGIES, StrategySpec

__all__ = [
    "STRATEGIES",
    "TRAINED_STRATEGIES",
    "StrategyReport",
    "StrategySpec",
    "apply_strategy",
    "count_parameters",
    "ensure_adapters",
    "merge_lora",
    "parameter_table",
    "restore_trained_state",
    "set_train_mode",
    "trained_state",
]
LORA_ADAPTER_NAME = "default"
ADAPTER_MODULE_NAMES = ("Adapter", "adapter")
ADAPTER_INSERTABLE: tuple[str, ...] = ("tiny_sam",)


@dataclass
class StrategyReport:
    """What :func:`apply_strategy` did."""

    strategy: str
    trainable_params: int
    total_params: int
    trainable_names: list[str] = field(default_factory=list)
    lora_modules: list[str] = field(default_factory=list)


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    try:
        return model.image_encoder, model.prompt_encoder, model.mask_decoder
    except AttributeError as exc:
        raise ConfigError(
            f"{type(model).__name__} is not a SAM-family model "
            "(needs image_encoder, prompt_encoder, mask_decoder)"
        ) from exc


def encoder_blocks(encoder: nn.Module) -> list[nn.Module]:
    """The image encoder's transformer/conv blocks in forward order (see module docstring)."""
    blocks = getattr(encoder, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        return list(blocks)
    layers = getattr(encoder, "layers", None)
    if isinstance(layers, nn.ModuleList) and all(
        isinstance(getattr(la, "blocks", None), nn.ModuleList) for la in layers
    ):
        return [b for la in layers for b in la.blocks]
    raise ConfigError(f"{type(encoder).__name__}: cannot find encoder blocks (.blocks or .layers[*].blocks)")


def adapter_modules(model: nn.Module) -> list[nn.Module]:
    """Adapter modules (attribute named ``Adapter``/``adapter``) inside the image encoder."""
    encoder = _parts(model)[0]
    found = []
    for name, module in encoder.named_modules():
        if name and name.rsplit(".", 1)[-1] in ADAPTER_MODULE_NAMES:
            found.append(module)
    return found


def ensure_adapters(model: nn.Module) -> bool:
    """Give ``model`` SAM-Med2D-design adapters if it has none and is in :data:`ADAPTER_INSERTABLE`.

    The new adapters' final LayerNorm has zero weight and bias, so the model's output is unchanged until they
    are trained. Returns True if adapters were inserted.

    Raises:
        ConfigError: the model has no adapters and is not adapter-insertable.
    """
    if adapter_modules(model):
        return False
    name = getattr(model, "name", type(model).__name__)
    if name not in ADAPTER_INSERTABLE:
        raise ConfigError(
            f"finetune strategy 'adapter' needs a model with adapter modules; model '{name}' has none "
            f"(models with adapters: sam_med2d, {', '.join(ADAPTER_INSERTABLE)})"
        )
    from medfm_robust.seg import models

    device = next(model.parameters()).device
    models._add_adapters(model.image_encoder)  # the SAM-Med2D block + adapter design of the model zoo
    for adapter in adapter_modules(model):
        adapter.to(device)
        nn.init.zeros_(adapter.norm.weight)
        nn.init.zeros_(adapter.norm.bias)
    return True


def lora_target_names(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Full module names (in ``model``) of the encoder-block linears matched by ``targets``.

    A target matches a module whose name *relative to its block* equals it or ends with ``.<target>``.

    Raises:
        ConfigError: a target matches nothing, or matches a module that is not ``nn.Linear``.
    """
    encoder = _parts(model)[0]
    name_of = {id(m): n for n, m in model.named_modules()}
    names: list[str] = []
    hits = dict.fromkeys(targets, 0)
    for block in encoder_blocks(encoder):
        prefix = name_of[id(block)]
        for rel, module in block.named_modules():
            if not rel:
                continue
            for t in targets:
                if rel == t or rel.endswith("." + t):
                    if not isinstance(module, nn.Linear):
                        raise ConfigError(
                            f"finetune lora target '{t}' matches {prefix}.{rel} ({type(module).__name__}), "
                            "not a linear layer"
                        )
                    names.append(f"{prefix}.{rel}")
                    hits[t] += 1
    missing = [t for t, n in hits.items() if n == 0]
    if missing:
        raise ConfigError(f"finetune lora targets {missing} match no module in the image encoder blocks")
    return names


def apply_strategy(model: nn.Module, spec: StrategySpec) -> StrategyReport:
    """Freeze ``model`` and unfreeze (or inject LoRA / insert adapters for) what ``spec`` trains, in place.

    LoRA factors and inserted adapters are initialised from the global torch RNG (seed it first).

    Returns:
        Trainable/total parameter counts and the trainable parameter names.
    """
    encoder, prompt, decoder = _parts(model)
    model.requires_grad_(False)
    lora_names: list[str] = []
    if spec.name == "full":
        model.requires_grad_(True)
    elif spec.name == "enc_only":
        if spec.unfreeze_last_blocks is None:
            encoder.requires_grad_(True)
        else:
            blocks = encoder_blocks(encoder)
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
            found = adapter_modules(model)
            if not found:
                name = getattr(model, "name", type(model).__name__)
                raise ConfigError(f"finetune enc_only train_adapters: model '{name}' has no adapter modules")
            for a in found:
                a.requires_grad_(True)
    elif spec.name == "dec_only":
        decoder.requires_grad_(True)
    elif spec.name == "dec_prompt":
        decoder.requires_grad_(True)
        prompt.requires_grad_(True)
    elif spec.name == "adapter":
        ensure_adapters(model)
        model.requires_grad_(False)
        for a in adapter_modules(model):
            a.requires_grad_(True)
    elif spec.name == "lora":
        lora_names = inject_lora(model, spec)
    if spec.trains("train_decoder"):
        decoder.requires_grad_(True)
    if spec.trains("train_prompt_encoder"):
        prompt.requires_grad_(True)
    trainable, total = count_parameters(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return StrategyReport(spec.name, trainable, total, names, lora_names)


def inject_lora(model: nn.Module, spec: StrategySpec) -> list[str]:
    """Insert peft LoRA layers on the matched encoder-block linears; only the LoRA factors stay trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    names = lora_target_names(model, spec.lora_targets)
    cfg = LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=names,
        bias="none",
    )
    inject_adapter_in_model(cfg, model, adapter_name=LORA_ADAPTER_NAME)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_A." in n or ".lora_B." in n)
    return names


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
            with torch.device("meta" if spec.input_size >= 1024 or name == "sam_med2d" else "cpu"):
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
