"""LoRA fine-tuning for grounding (paper: r = 16, alpha = 32 on the vision encoder's attention projections).

The adapter is trained on the ``train`` rows of a grounding sample table with the evaluation prompt
(:func:`~medfm_robust.vlm.prompts.build_prompt`) and the box in the model's convention as the answer
(:func:`~medfm_robust.vlm.prompts.target_text`); the loss covers only the answer tokens (see
:mod:`medfm_robust.vlm.train`). Only LoRA factors train (AdamW); the base weights stay frozen.

Resumable like the segmentation trainer: after every epoch the LoRA tensors, the optimiser state and the
history are written atomically to a state file with a fingerprint of everything the run depends on (base
weights, data, settings, seed). A re-run with the same fingerprint continues after the last finished epoch;
shuffling and dropout are seeded by (model, epoch, step), so the result equals an uninterrupted run. The
final adapter is saved in ``peft``'s format (``adapter_config.json`` + ``adapter_model.safetensors``) and
loaded by evaluation through :func:`medfm_robust.vlm.models.load_local_vlm`.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medfm_robust.config import config_hash
from medfm_robust.errors import ConfigError, DataError
from medfm_robust.io import atomic_path, sha256_file, write_json_atomic
from medfm_robust.seeding import seed_for

log = logging.getLogger(__name__)


def target_pattern(modules: Sequence[str], scope: str = "vision_tower") -> str:
    """A ``peft`` ``target_modules`` regex (full match on dotted module names): modules whose name ends in
    one of ``modules`` and, unless ``scope`` is empty, lies under a component named ``scope``."""
    if not modules:
        raise ConfigError("config key 'vlm.grounding_finetune.target_modules': empty")
    names = "|".join(re.escape(m) for m in modules)
    if scope:
        return rf"(?:.*\.)?{re.escape(scope)}\.(?:.*\.)?(?:{names})"
    return rf"(?:.*\.)?(?:{names})"


def lora_config(settings: Mapping[str, Any]) -> Any:
    """``peft.LoraConfig`` from ``vlm.grounding_finetune`` (r, alpha, dropout, targets, scope)."""
    from peft import LoraConfig

    return LoraConfig(
        r=int(settings["r"]),
        lora_alpha=float(settings["alpha"]),
        lora_dropout=float(settings.get("dropout", 0.0)),
        target_modules=target_pattern(settings["target_modules"],
                                      settings.get("target_scope", "vision_tower")),
        bias="none",
    )


def add_lora(model: Any, settings: Mapping[str, Any]) -> Any:
    """Wrap ``model`` with LoRA adapters; raises ``ConfigError`` if no module matches the targets."""
    from peft import get_peft_model

    cfg = lora_config(settings)
    try:
        peft_model = get_peft_model(model, cfg)
    except ValueError as exc:
        raise ConfigError(
            f"config key 'vlm.grounding_finetune.target_modules': no module of {type(model).__name__} "
            f"matches "
            f"{cfg.target_modules!r} ({exc})"
        ) from exc
    return peft_model


def lora_state(model: Any) -> dict[str, Any]:
    """The trainable (LoRA) tensors of a ``PeftModel``, detached copies on CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.named_parameters() if v.requires_grad}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path, fingerprint: str) -> dict[str, Any] | None:
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a corrupt state file is ignored (the run restarts), never trusted
        log.warning("%s: unreadable resume state (%s); starting afresh", path, exc)
        return None
    if state.get("fingerprint") != fingerprint:
        log.info("%s: resume state belongs to other settings or data; starting afresh", path)
        return None
    return state


def finetune_grounding(
    name: str,
    spec: Mapping[str, Any],
    settings: Mapping[str, Any],
    *,
    base_dir: str | Path,
    samples_path: str | Path,
    out_dir: str | Path,
    info_path: str | Path,
    state_path: str | Path,
    convention: str,
    seed: int = 0,
    device: str | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train a grounding LoRA adapter for model ``name`` (base checkpoint folder ``base_dir``).

    Args:
        spec: the model's ``vlm.models`` entry (dtype, system prompt, image position).
        settings: ``vlm.grounding_finetune`` (r, alpha, dropout, target_modules, target_scope, epochs,
            batch_size, lr, weight_decay, grad_clip, max_train_samples).
        samples_path: grounding sample table; its ``train`` rows are the training set.
        out_dir: adapter folder (``peft`` format), written when training finishes.
        info_path: JSON sidecar (parameter counts, history, base revision, settings hash).
        state_path: resume state, written atomically after every epoch and removed at the end.
        convention: the model's box convention for the answer text.
        on_epoch_end: called with the epoch index after its state is saved (tests interrupt here).
    """
    import torch

    from medfm_robust.vlm.datasets import read_samples
    from medfm_robust.vlm.models import folder_revision, load_local_vlm
    from medfm_robust.vlm.train import encode_examples, examples_from_table, replace_dir, run_epoch

    t0 = time.perf_counter()
    df = read_samples(samples_path)
    train = df[df["split"] == "train"]
    cap = settings.get("max_train_samples")
    if cap is not None and len(train) > int(cap):
        ranks = [seed_for("vlm_lora_subset", name, sid, global_seed=seed) for sid in train["sample_id"]]
        train = train.assign(_r=ranks).sort_values(["_r", "sample_id"]).head(int(cap)).drop(columns="_r")
        train = train.sort_values("sample_id", kind="stable")
    if train.empty:
        raise DataError(f"{samples_path}: no train rows for grounding fine-tuning")
    examples = examples_from_table(train, "grounding", convention)
    vlm = load_local_vlm(name, base_dir, dtype=spec.get("dtype", "bfloat16"), device=device)
    processor, base_revision = vlm.processor, folder_revision(base_dir)
    encoded = encode_examples(processor, examples, system_prompt=spec.get("system_prompt"),
                              image_position=spec.get("image_position", "before"))
    run_settings = {k: settings[k] for k in sorted(settings)}
    fingerprint = config_hash({
        "model": name, "base": base_revision, "data": sha256_file(samples_path), "settings": run_settings,
        "seed": seed, "convention": convention, "system_prompt": spec.get("system_prompt"),
        "image_position": spec.get("image_position", "before"), "samples": list(train["sample_id"]),
    })
    torch.manual_seed(seed_for("vlm_lora_init", name, global_seed=seed))
    model = add_lora(vlm.model, settings)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=float(settings["lr"]),
                                  weight_decay=float(settings.get("weight_decay", 0.0)))
    history: list[dict[str, float]] = []
    start = 0
    state_file = Path(state_path)
    resumed = _load_state(state_file, fingerprint)
    if resumed is not None:
        model.load_state_dict(resumed["lora"], strict=False)
        optimizer.load_state_dict(resumed["optimizer"])
        start, history = int(resumed["epoch"]), list(resumed["history"])
        log.info("%s: resumed grounding LoRA after epoch %d (%s)", name, start, state_file)
    for epoch in range(start, int(settings["epochs"])):
        loss = run_epoch(model, optimizer, encoded, pad_id=processor.tokenizer.pad_token_id,
                         batch_size=int(settings["batch_size"]), purpose="grounding_lora", model_name=name,
                         epoch=epoch, seed=seed, grad_clip=float(settings.get("grad_clip", 0.0)) or None,
                         dtype=vlm.dtype)
        history.append({"epoch": epoch, "loss": loss})
        log.info("%s grounding LoRA epoch %d: loss %.4f", name, epoch, loss)
        _save_state(state_file, {"fingerprint": fingerprint, "epoch": epoch + 1, "history": history,
                                 "lora": lora_state(model), "optimizer": optimizer.state_dict()})
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    replace_dir(tmp, out)
    n_trainable = sum(p.numel() for p in trainable)
    info = {
        "model": name,
        "base_dir": str(base_dir),
        "base_revision": base_revision,
        "adapter_revision": folder_revision(out),
        "n_train_samples": len(examples),
        "trainable_parameters": int(n_trainable),
        "total_parameters": int(sum(p.numel() for p in model.parameters())),
        "adapted_modules": sorted(n for n, _ in model.named_modules() if n.endswith(".lora_A")),
        "history": history,
        "resumed_from_epoch": start if resumed is not None else None,
        "settings": run_settings,
        "settings_hash": config_hash(run_settings),
        "box_convention": convention,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(info_path, info)
    state_file.unlink(missing_ok=True)
    return info
