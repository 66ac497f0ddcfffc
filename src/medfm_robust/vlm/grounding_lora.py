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
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medfm_robust.config import config_hash, with_defaults
from medfm_robust.errors import ConfigError, DataError
from medfm_robust.io import sha256_file, write_json_atomic
from medfm_robust.resume import read_resume_state, write_resume_state
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

    settings = with_defaults("vlm.grounding_finetune", settings)
    return LoraConfig(
        r=int(settings["r"]),
        lora_alpha=float(settings["alpha"]),
        lora_dropout=float(settings["dropout"]),
        target_modules=target_pattern(settings["target_modules"], settings["target_scope"]),
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


def _train_rows(df: Any, cap: int | None, *, name: str, seed: int, where: str) -> Any:
    """The ``train`` rows of a grounding sample table; with ``cap``, a deterministic subset of ``cap`` rows
    (ranked by ``seed_for("vlm_lora_subset", name, sample_id)``), sorted by ``sample_id``."""
    train = df[df["split"] == "train"]
    if cap is not None and len(train) > int(cap):
        ranks = [seed_for("vlm_lora_subset", name, sid, global_seed=seed) for sid in train["sample_id"]]
        train = train.assign(_r=ranks).sort_values(["_r", "sample_id"]).head(int(cap)).drop(columns="_r")
        train = train.sort_values("sample_id", kind="stable")
    if train.empty:
        raise DataError(f"{where}: no train rows for grounding fine-tuning")
    return train


def _prompt_settings(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The model entry's ``system_prompt`` and ``image_position`` (``spec`` filled by ``with_defaults``)."""
    return {"system_prompt": spec["system_prompt"], "image_position": spec["image_position"]}


def _parameter_counts(model: Any, trainable: list[Any]) -> dict[str, Any]:
    """Trainable / total parameter counts and the names of the LoRA-adapted modules."""
    return {
        "trainable_parameters": int(sum(p.numel() for p in trainable)),
        "total_parameters": int(sum(p.numel() for p in model.parameters())),
        "adapted_modules": sorted(n for n, _ in model.named_modules() if n.endswith(".lora_A")),
    }


def _lora_model(base: Any, settings: Mapping[str, Any], *, name: str,
                seed: int) -> tuple[Any, list[Any], Any]:
    """(LoRA-wrapped ``base``, its trainable parameters, their AdamW optimizer); the new LoRA weights are
    drawn from ``seed_for("vlm_lora_init", name)``."""
    import torch

    torch.manual_seed(seed_for("vlm_lora_init", name, global_seed=seed))
    model = add_lora(base, settings)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=float(settings["lr"]),
                                  weight_decay=float(settings["weight_decay"]))
    return model, trainable, optimizer


def _train_epochs(model: Any, optimizer: Any, encoded: Any, settings: Mapping[str, Any], *, name: str,
                  seed: int, pad_id: int, dtype: Any, state_file: Path, fingerprint: str,
                  on_epoch_end: Callable[[int], None] | None) -> tuple[list[dict[str, float]], int | None]:
    """Resume from ``state_file`` when it matches ``fingerprint``, then train the remaining epochs, saving the
    state after each. Returns (history, epoch resumed from or None)."""
    from medfm_robust.vlm.train import run_epoch

    resumed = read_resume_state(state_file, fingerprint)
    if resumed is not None:
        model.load_state_dict(resumed["lora"], strict=False)
        optimizer.load_state_dict(resumed["optimizer"])
        log.info("%s: resumed grounding LoRA after epoch %d (%s)", name, int(resumed["epoch"]), state_file)
    start = int(resumed["epoch"]) if resumed is not None else 0
    history = list(resumed["history"]) if resumed is not None else []
    for epoch in range(start, int(settings["epochs"])):
        loss = run_epoch(model, optimizer, encoded, pad_id=pad_id, batch_size=int(settings["batch_size"]),
                         purpose="grounding_lora", model_name=name, epoch=epoch, seed=seed,
                         grad_clip=float(settings["grad_clip"]) or None, dtype=dtype)
        history.append({"epoch": epoch, "loss": loss})
        log.info("%s grounding LoRA epoch %d: loss %.4f", name, epoch, loss)
        write_resume_state(state_file, {"fingerprint": fingerprint, "epoch": epoch + 1, "history": history,
                                        "lora": lora_state(model), "optimizer": optimizer.state_dict()})
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    return history, (start if resumed is not None else None)


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
    from medfm_robust.vlm.datasets import read_samples
    from medfm_robust.vlm.models import folder_revision, load_local_vlm
    from medfm_robust.vlm.train import encode_examples, examples_from_table, save_folder

    spec, settings = with_defaults("vlm.models.*", spec), with_defaults("vlm.grounding_finetune", settings)
    t0, cap = time.perf_counter(), settings["max_train_samples"]
    train = _train_rows(read_samples(samples_path), cap, name=name, seed=seed, where=str(samples_path))
    examples = examples_from_table(train, "grounding", convention)
    vlm = load_local_vlm(name, base_dir, dtype=spec["dtype"], device=device)
    processor, base_revision = vlm.processor, folder_revision(base_dir)
    encoded = encode_examples(processor, examples, **_prompt_settings(spec))
    run_settings = {k: settings[k] for k in sorted(settings)}
    fingerprint = config_hash({
        "model": name, "base": base_revision, "data": sha256_file(samples_path), "settings": run_settings,
        "seed": seed, "convention": convention, **_prompt_settings(spec), "samples": list(train["sample_id"]),
    })
    model, trainable, optimizer = _lora_model(vlm.model, settings, name=name, seed=seed)
    history, resumed_from = _train_epochs(model, optimizer, encoded, settings, name=name, seed=seed,
                                          pad_id=processor.tokenizer.pad_token_id, dtype=vlm.dtype,
                                          state_file=Path(state_path), fingerprint=fingerprint,
                                          on_epoch_end=on_epoch_end)
    save_folder(out := Path(out_dir), lambda tmp: model.save_pretrained(tmp, safe_serialization=True))
    info = {
        "model": name, "base_dir": str(base_dir), "base_revision": base_revision,
        "adapter_revision": folder_revision(out), "n_train_samples": len(examples),
        **_parameter_counts(model, trainable), "history": history, "resumed_from_epoch": resumed_from,
        "settings": run_settings, "settings_hash": config_hash(run_settings), "box_convention": convention,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(info_path, info)
    Path(state_path).unlink(missing_ok=True)
    return info
