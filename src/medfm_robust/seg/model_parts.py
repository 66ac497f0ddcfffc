"""The parts of a SAM-family model that fine-tuning strategies freeze, unfreeze or extend.

Encoder blocks are ``image_encoder.blocks`` (SAM ViT) or the concatenation of
``image_encoder.layers[*].blocks`` (TinyViT, LiteMedSAM). LoRA targets are matched *inside these blocks
only*, so a ViT's ``patch_embed.proj`` convolution is never a target (the original SAM-Med2D LoRA hit it).
Torch and peft are imported where used, so that the strategy registry (which calls these at training
time) stays importable without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from medfm_robust.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from medfm_robust.seg.strategy_registry import StrategySpec

LORA_ADAPTER_NAME = "default"
ADAPTER_MODULE_NAMES = ("Adapter", "adapter")


def model_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """``(image_encoder, prompt_encoder, mask_decoder)``; a model without them is a ``ConfigError``."""
    try:
        return model.image_encoder, model.prompt_encoder, model.mask_decoder
    except AttributeError as exc:
        raise ConfigError(
            f"{type(model).__name__} is not a SAM-family model "
            "(needs image_encoder, prompt_encoder, mask_decoder)"
        ) from exc


def encoder_blocks(encoder: nn.Module) -> list[nn.Module]:
    """The image encoder's transformer/conv blocks in forward order (see module docstring)."""
    from torch import nn

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
    encoder = model_parts(model)[0]
    found = []
    for name, module in encoder.named_modules():
        if name and name.rsplit(".", 1)[-1] in ADAPTER_MODULE_NAMES:
            found.append(module)
    return found


def ensure_adapters(model: nn.Module) -> bool:
    """Give ``model`` adapters if it has none, through its model definition's ``insert_adapters`` hook
    (registered models with ``adapters="insertable"``: SAM-Med2D's design, a no-op until trained).

    Returns True if adapters were inserted.

    Raises:
        ConfigError: the model has no adapters and its definition cannot insert them.
    """
    from medfm_robust.seg.models import MODEL_SPECS, adapter_models

    if adapter_modules(model):
        return False
    name = getattr(model, "name", type(model).__name__)
    spec = MODEL_SPECS.get(name)
    if spec is None or spec.insert_adapters is None:
        raise ConfigError(
            f"finetune strategy 'adapter' needs a model with adapter modules; model '{name}' has none "
            f"(models with adapters: {', '.join(adapter_models())})"
        )
    spec.insert_adapters(model)
    return True


def lora_target_names(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Full module names (in ``model``) of the encoder-block linears matched by ``targets``.

    A target matches a module whose name *relative to its block* equals it or ends with ``.<target>``.

    Raises:
        ConfigError: a target matches nothing, or matches a module that is not ``nn.Linear``.
    """
    from torch import nn

    encoder = model_parts(model)[0]
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
