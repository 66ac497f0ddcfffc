"""Pretraining of the workflow's own tiny SAM (rule ``pretrain_tiny_sam``).

The tiny SAM (``medfm_robust.seg.models.build_tiny_sam``, ~0.3 M parameters, 256 input) starts from a seeded
random initialisation and is trained end to end (strategy ``full``) on the union of the training splits of
the configured segmentation datasets; the epoch with the best mean validation Dice (union of the validation
splits) is kept. The test splits are never read. Output: the full state dict as safetensors, loadable with
``build_model("tiny_sam", checkpoint=...)`` (strict), plus a JSON sidecar.

Initialisation: the mask decoder's three token/image cross-attentions start with tied query and key
projections (``k_proj := q_proj``, scaled by ``attention_init_gain``, zero biases). Their attention logits
then start as a similarity of the positional encodings, so image positions attend to nearby box corners
from the first step; from a plain random start a model this small takes many times longer to learn to use
the box at all (measured on the demo data: segmenting every salient object, Dice ~0.45, for hundreds of
steps). It is an initialisation only: every weight is trained. The model also receives the box as a dense
mask prompt (a filled rectangle, see ``TinySamSegmenter``), which its convolutions turn into localisation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medfm_robust.devices import pick_device
from medfm_robust.io import sha256_bytes, write_bytes_atomic, write_json_atomic
from medfm_robust.seeding import seed_for
from medfm_robust.seg.augment import SegData, concat, load_split
from medfm_robust.seg.checkpoint import safetensors_bytes
from medfm_robust.seg.finetune import (
    plot_history,
    run_record,
    state_path_for,
    write_history_csv,
)
from medfm_robust.seg.strategies import StrategySpec, apply_strategy, restore_trained_state
from medfm_robust.seg.trainer import TrainConfig, TrainResult, evaluate, train

log = logging.getLogger(__name__)
MODEL = "tiny_sam"


def tie_prompt_attention(model: torch.nn.Module, gain: float) -> None:
    """Tie (and scale by ``gain``) the query/key projections of the decoder's cross-attentions, in place."""
    transformer = model.mask_decoder.transformer
    attns = [
        a
        for layer in transformer.layers
        for a in (layer.cross_attn_token_to_image, layer.cross_attn_image_to_token)
    ]
    attns.append(transformer.final_attn_token_to_image)
    with torch.no_grad():
        for att in attns:
            att.q_proj.weight.mul_(gain)
            att.k_proj.weight.copy_(att.q_proj.weight)
            att.q_proj.bias.zero_()
            att.k_proj.bias.zero_()


def pretrain_tiny_sam(
    *,
    datasets: Sequence[str],
    train_shards: Sequence[str | Path],
    val_shards: Sequence[str | Path],
    checkpoint_out: str | Path,
    log_csv: str | Path,
    curve_png: str | Path,
    settings: Mapping[str, Any],
    global_seed: int = 0,
    device: str = "auto",
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train tiny SAM from scratch on several datasets and write ``pretrained.safetensors`` + ``.json``.

    Args:
        datasets: dataset names (aligned with the shard lists).
        train_shards, val_shards: canonical shards (``paths.data_shard``).
        settings: ``finetune.pretrain_tiny_sam.train`` (training keys as for fine-tuning, with
            ``max_train_images`` / ``max_val_images`` per dataset) + ``attention_init_gain`` (0: plain init).
        stop_after: stop after this many epochs (simulated kill; outputs are then not written).
    """
    from medfm_robust.seg.models import build_model

    dev = pick_device(device, "finetune.device")
    tcfg = TrainConfig.from_config(settings)
    train_parts = _load_parts(train_shards, settings, "max_train_images")
    val_parts = _load_parts(val_shards, settings, "max_val_images")
    train_data, val_data = concat(train_parts), concat(val_parts)
    torch.manual_seed(seed_for("pretrain-init", MODEL, global_seed=global_seed))
    model = build_model(MODEL, checkpoint=None)
    gain = float(settings["attention_init_gain"])
    if gain > 0:
        tie_prompt_attention(model, gain)
    report = apply_strategy(model, StrategySpec("full"))
    log.info("pretraining %s (%d parameters) on %d train / %d val images from %d datasets", MODEL,
             report.total_params, len(train_data), len(val_data), len(datasets))
    result = train(
        model,
        train_data,
        val_data,
        tcfg,
        run_key=(MODEL, "pretrain", *datasets),
        global_seed=global_seed,
        state_path=state_path_for(checkpoint_out),
        device=dev,
        stop_after=stop_after,
        progress=progress,
        on_epoch=lambda h: write_history_csv(log_csv, h),
    )
    if not result.finished:
        return result
    _write_pretrained(model, result, datasets, val_parts, settings, checkpoint_out=checkpoint_out,
                      log_csv=log_csv, curve_png=curve_png, n_train=len(train_data), n_val=len(val_data),
                      global_seed=global_seed, device=dev, eval_batch_size=tcfg.eval_batch_size,
                      total_params=report.total_params)
    return result


def _load_parts(shards: Sequence[str | Path], settings: Mapping[str, Any], cap_key: str) -> list[SegData]:
    """One split of each dataset at the settings' ``image_size``, each capped at ``settings[cap_key]``."""
    size = settings.get("image_size")
    return [load_split(p, size=size, max_images=settings.get(cap_key)) for p in shards]


def _write_pretrained(
    model: torch.nn.Module,
    result: TrainResult,
    datasets: Sequence[str],
    val_parts: Sequence[SegData],
    settings: Mapping[str, Any],
    *,
    checkpoint_out: str | Path,
    log_csv: str | Path,
    curve_png: str | Path,
    n_train: int,
    n_val: int,
    global_seed: int,
    device: torch.device,
    eval_batch_size: int,
    total_params: int,
) -> None:
    """Load the best epoch's tensors into ``model``, score each dataset's validation split, and write the
    checkpoint, its sidecar, the per-epoch CSV and the loss/Dice curve."""
    restore_trained_state(model, result.best_state, source="best epoch")
    per_dataset = {
        ds: evaluate(model, part, batch_size=eval_batch_size, device=device)[1]
        for ds, part in zip(datasets, val_parts, strict=True)
    }
    metadata = {"format": "medfm-robust-tiny-sam", "datasets": ",".join(datasets)}
    data = safetensors_bytes(model.state_dict(), metadata)
    write_bytes_atomic(checkpoint_out, data)
    write_json_atomic(
        Path(checkpoint_out).with_suffix(".json"),
        {
            "model": MODEL,
            "checkpoint_sha256": sha256_bytes(data),
            "datasets": list(datasets),
            "total_params": total_params,
            "best_epoch": result.best_epoch,
            "val_dice": result.best_val_dice,
            "val_dice_per_dataset": per_dataset,
            **run_record(result, settings, n_train=n_train, n_val=n_val,
                         global_seed=global_seed, device=device,
                         selection="best mean Dice on the union of the validation splits"),
        },
    )
    write_history_csv(log_csv, result.history)
    plot_history(curve_png, result.history, f"{MODEL} pretraining ({len(datasets)} datasets)",
                 result.zero_shot_val_dice, result.best_epoch)
    log.info("pretrained %s: best epoch %d, val Dice %.4f, %.1f s", MODEL, result.best_epoch,
             result.best_val_dice, result.seconds)
