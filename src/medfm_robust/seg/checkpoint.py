"""Fine-tuned checkpoints: only the trained tensors in safetensors, plus a JSON sidecar.

``paths.checkpoint(model, dataset, strategy, s)`` (``s``: the training seed) holds
exactly the tensors the strategy trains (LoRA as its low-rank factors ``...lora_A.weight`` /
``...lora_B.weight``); the sidecar ``seed{s}.json`` records the training seed, the base checkpoint's
SHA-256, the strategy and its structural settings, trainable/total parameter counts, best epoch, validation
Dice and the config hash. :func:`load_for_eval` rebuilds the evaluable model.

Official base checkpoints are read by :func:`read_state_dict` without executing pickled code: a raw state dict
(MedSAM, SAM, LiteMedSAM) or a dict with ``model`` and optimiser entries (SAM-Med2D's ``train.py`` pickles the
optimiser OBJECT, which ``torch.load(weights_only=True)`` refuses).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medfm_robust.errors import CheckpointError
from medfm_robust.io import sha256_file, write_bytes_atomic, write_json_atomic
from medfm_robust.seg.strategies import (
    StrategySpec,
    apply_strategy,
    has_lora,
    merge_lora,
    restore_trained_state,
    trained_state,
)
from medfm_robust.seg.strategy_registry import get_strategy

SIDECAR_FORMAT = 1

# Globals a checkpoint may name that are called for real: tensor/storage reconstruction (as in torch's own
# weights_only unpickler) and plain containers. Nothing here runs code chosen by the file.
_REAL_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("collections", "OrderedDict"),
    ("collections", "defaultdict"), ("torch", "Size"), ("torch", "device"),
    *(("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "bool", "str")),
}
# Module prefixes of training state that is kept as an inert placeholder, never imported nor called:
# optimiser / scheduler / AMP-scaler objects, argparse namespaces, numpy scalars and arrays.
_INERT_PREFIXES = ("torch.optim", "torch.cuda.amp", "torch.amp", "argparse", "numpy", "copyreg")


class _Inert:
    """Stand-in for a pickled object of an allow-listed training-state class: keeps nothing, runs nothing."""

    def __new__(cls, *args: object, **kwargs: object) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, value: object) -> None:
        pass

    def extend(self, values: object) -> None:
        pass


class _Refused(pickle.UnpicklingError):
    """A global outside the allow-lists."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler resolving only :data:`_REAL_GLOBALS`; training-state classes become :class:`_Inert`
    subclasses; any other global (``os.system``, ``builtins.eval``, ...) raises ``UnpicklingError``."""

    def find_class(self, module: str, name: str) -> object:
        module = "builtins" if module == "__builtin__" else module
        if (module, name) in _REAL_GLOBALS:
            return super().find_class(module, name)
        if module.startswith(_INERT_PREFIXES):
            return type(name, (_Inert,), {"__module__": f"inert.{module}"})
        raise _Refused(f"refusing global {module}.{name}")


class _RestrictedPickle:
    """``pickle_module`` for ``torch.load`` that unpickles with :class:`_RestrictedUnpickler`."""

    Unpickler = _RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` on the CPU that never executes pickled code.

    First ``weights_only=True``; a file it refuses (e.g. SAM-Med2D's ``{'model': ..., 'optimizer': Adam}``)
    is read again with :class:`_RestrictedUnpickler` (tensors real, optimiser state inert). A global outside
    both allow-lists raises :class:`CheckpointError` naming the file and the global; a file that is not a
    checkpoint at all raises its unpickling error (:func:`read_state_dict` words it).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # not weights-only: read again with the restricted unpickler below
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle)
    except _Refused as exc:
        raise CheckpointError(f"{path}: cannot be read safely ({exc}; only tensors, containers and "
                              "optimiser state are accepted)") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a base checkpoint: ``.safetensors``, or a torch ``.pth``/``.pt`` holding a plain state
    dict or one under a ``model`` / ``state_dict`` / ``model_state_dict`` key (other entries, such as a
    pickled optimiser, are ignored), read on the CPU by :func:`safe_torch_load`."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(p), device="cpu"))
        obj = safe_torch_load(p)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{p}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p}: not a state dict of tensors")
    return dict(obj)


def sidecar_path(path: str | Path) -> Path:
    """``x.safetensors`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """``safetensors.torch.save`` with a reproducible header: the library writes ``__metadata__`` from a
    Rust hash map whose key order changes from call to call, so the same tensors gave different bytes (and
    SHA-256s) in every process; here the metadata keys are rewritten in sorted order (same header length,
    same tensor offsets)."""
    import json
    import struct

    from safetensors.torch import save

    plain = {k: v.detach().cpu().contiguous() for k, v in sorted(tensors.items())}
    data = save(plain, metadata=dict(metadata))
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:
        raise CheckpointError("safetensors header grew when its metadata was sorted")
    return data[:8] + text.ljust(n, b" ") + data[8 + n :]


def save_finetuned(path: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write ``tensors`` (safetensors) and ``meta`` (JSON sidecar) atomically; the sidecar gets the file's
    SHA-256 as ``checkpoint_sha256``."""
    data = safetensors_bytes(
        tensors, {"format": "medfm-robust-finetuned", "strategy": str(meta.get("strategy", ""))}
    )
    write_bytes_atomic(path, data)
    from medfm_robust.io import sha256_bytes

    write_json_atomic(
        sidecar_path(path), {**meta, "format": SIDECAR_FORMAT, "checkpoint_sha256": sha256_bytes(data)}
    )


def read_finetuned(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a fine-tuned checkpoint and its sidecar.

    Raises:
        CheckpointError: a missing or unreadable file, or a sidecar whose recorded SHA-256 does not match.
    """
    p = Path(path)
    side = sidecar_path(p)
    for f in (p, side):
        if not f.is_file():
            raise CheckpointError(f"{f}: fine-tuned checkpoint file not found")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{side}: invalid JSON sidecar ({exc})") from exc
    for key in ("strategy", "base_checkpoint_sha256", "checkpoint_sha256"):
        if key not in meta:
            raise CheckpointError(f"{side}: sidecar field '{key}' missing")
    digest = sha256_file(p)
    if digest != meta["checkpoint_sha256"]:
        raise CheckpointError(f"{p}: SHA-256 {digest} differs from its sidecar ({meta['checkpoint_sha256']})")
    try:
        from safetensors.torch import load_file

        tensors = dict(load_file(str(p), device="cpu"))
    except Exception as exc:
        raise CheckpointError(f"{p}: cannot read safetensors ({type(exc).__name__}: {exc})") from exc
    return tensors, meta


def apply_finetuned(
    model: nn.Module, path: str | Path, *, strategy: str | None = None, base_sha256: str | None = None
) -> dict[str, Any]:
    """Apply a fine-tuned checkpoint to a freshly built base ``model`` (in place) and return its sidecar.

    The strategy's structure (LoRA layers, inserted adapters) is rebuilt from the sidecar, then the stored
    tensors are loaded strictly: the file must hold exactly the tensors the strategy trains.

    Raises:
        CheckpointError: strategy or base-checkpoint hash differ from the sidecar, or missing/unexpected keys
            or shape mismatches (the message names the path and the keys).
    """
    tensors, meta = read_finetuned(path)
    if strategy is not None and meta["strategy"] != strategy:
        raise CheckpointError(f"{path}: holds strategy '{meta['strategy']}', not '{strategy}'")
    if base_sha256 is not None and meta["base_checkpoint_sha256"] != base_sha256:
        raise CheckpointError(
            f"{path}: fine-tuned from base checkpoint {meta['base_checkpoint_sha256'][:12]}..., "
            f"but the base given has SHA-256 {base_sha256[:12]}..."
        )
    struct = meta.get("strategy_settings") or {"name": meta["strategy"]}
    spec = StrategySpec.from_config(meta["strategy"], struct)
    apply_strategy(model, spec)
    expected = set(trained_state(model))
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not match strategy '{spec.name}' of model {getattr(model, 'name', '?')}: "
            f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    restore_trained_state(model, tensors, source=str(path))
    return meta


def load_for_eval(
    model_name: str,
    base_checkpoint: str | Path | None,
    finetuned_path: str | Path | None,
    strategy: str | None = None,
    *,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """The model evaluation scores: base weights plus a fine-tuned checkpoint, LoRA merged, in ``eval()``.

    Args:
        model_name: registry name (``medfm_robust.seg.models``).
        base_checkpoint: as for ``build_model`` (a path, ``'bundled'`` for lite_medsam, or None = random).
        finetuned_path: ``paths.checkpoint(model, dataset, strategy, s)``; ``None``
            for ``zero_shot`` (then ``strategy`` must be ``zero_shot`` or None).
        strategy: expected strategy (checked against the sidecar).
        device: where to put the model.

    Returns:
        The model in ``eval()`` mode with every parameter frozen, LoRA merged into the base linears.
        ``model.checkpoint_hash`` becomes ``<base sha256>+<fine-tuned sha256>`` with a fine-tuned file.
    """
    from medfm_robust.seg.models import build_model

    if strategy is not None:
        get_strategy(strategy)
    model = build_model(model_name, checkpoint=base_checkpoint, strict=True)
    if finetuned_path is None:
        if strategy not in (None, "zero_shot"):
            raise CheckpointError(f"strategy '{strategy}' of {model_name} needs a fine-tuned checkpoint file")
    else:
        if strategy == "zero_shot":
            raise CheckpointError(f"{finetuned_path}: zero_shot takes no fine-tuned checkpoint")
        base_sha = model.checkpoint_hash if base_checkpoint is not None else None
        meta = apply_finetuned(model, finetuned_path, strategy=strategy, base_sha256=base_sha)
        if has_lora(model):
            merge_lora(model)
        model.checkpoint_hash = f"{model.checkpoint_hash}+{meta['checkpoint_sha256']}"
    model.requires_grad_(False)
    return model.to(device).eval()
