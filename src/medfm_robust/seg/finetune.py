"""Fine-tuning runs: train one strategy on a dataset and write checkpoint, sidecar, CSV log and curve.

Settings come resolved from :func:`medfm_robust.seg.finetune_config.run_settings` (re-exported here).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medfm_robust.config import config_hash
from medfm_robust.devices import pick_device
from medfm_robust.errors import ConfigError
from medfm_robust.io import atomic_path, write_text_atomic
from medfm_robust.seeding import seed_for
from medfm_robust.seg.augment import SegData, load_split
from medfm_robust.seg.checkpoint import save_finetuned
from medfm_robust.seg.finetune_config import StrategySpec, run_settings
from medfm_robust.seg.strategies import StrategyReport, apply_strategy
from medfm_robust.seg.trainer import HISTORY_COLUMNS, TrainConfig, TrainResult, train

log = logging.getLogger(__name__)
__all__ = ["finetune_run", "run_settings"]


def write_history_csv(path: str | Path, history: Sequence[Mapping[str, float]]) -> None:
    """Per-epoch log (columns :data:`HISTORY_COLUMNS`), written atomically."""
    lines = [",".join(HISTORY_COLUMNS)]
    for row in history:
        lines.append(",".join(str(int(row[c])) if c == "epoch" else f"{row[c]:.6g}" for c in HISTORY_COLUMNS))
    write_text_atomic(path, "\n".join(lines) + "\n")


def run_record(result: TrainResult, settings: Mapping[str, Any], *, n_train: int, n_val: int,
               global_seed: int, device: torch.device | str, selection: str) -> dict[str, Any]:
    """Sidecar fields every training run records (data sizes, selection rule, settings, provenance)."""
    return {
        "n_train": n_train,
        "n_val": n_val,
        "selection": selection,
        "config_hash": config_hash(dict(settings)),
        "settings": dict(settings),
        "global_seed": global_seed,
        "device": str(device),
        "seconds": round(result.seconds, 3),
        "torch": torch.__version__,
    }


def plot_history(
    path: str | Path,
    history: Sequence[Mapping[str, float]],
    title: str,
    zero_shot_dice: float | None = None,
    best_epoch: int | None = None,
) -> None:
    """Loss (train, val) and validation-Dice curves over epochs as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    ax1.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
    ax1.plot(epochs, [r["val_loss"] for r in history], marker="o", label="val")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss (BCE + Dice)")
    ax1.legend()
    ax2.plot(epochs, [r["val_dice"] for r in history], marker="o", color="C2", label="val Dice")
    if zero_shot_dice is not None:
        ax2.axhline(zero_shot_dice, color="grey", ls="--", label="before training")
    if best_epoch:
        ax2.axvline(best_epoch, color="C3", ls=":", label=f"selected (epoch {best_epoch})")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation Dice")
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def run_seed(global_seed: int, train_seed: int) -> int:
    """The seed a training run draws from: the workflow's seed for training seed 0 (so a single-seed run
    is unchanged), else a seed derived from both."""
    if int(train_seed) < 0:
        raise ConfigError(f"finetune: training seed must be >= 0, got {train_seed}")
    if int(train_seed) == 0:
        return int(global_seed)
    return seed_for("finetune-train-seed", int(train_seed), global_seed=global_seed)


def state_path_for(checkpoint: str | Path) -> Path:
    """Hidden resumable-state file beside a checkpoint (not a Snakemake output, so never deleted by it)."""
    p = Path(checkpoint)
    return p.with_name(f".{p.stem}.state.pt")


def finetune_run(
    *,
    model_name: str,
    base_checkpoint: str | Path | None,
    dataset: str,
    strategy: str,
    train_shard: str | Path,
    val_shard: str | Path,
    checkpoint_out: str | Path,
    log_csv: str | Path,
    curve_png: str | Path,
    settings: Mapping[str, Any],
    global_seed: int = 0,
    train_seed: int = 0,
    device: str = "auto",
    keep_state: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune ``model_name`` with ``strategy`` on one dataset and write its checkpoint, sidecar and logs.

    Args:
        settings: :func:`run_settings` output for this (model, strategy).
        global_seed, train_seed: the workflow's seed and the training seed (``finetune.seeds``); together
            they seed the new parameters' initialisation, the batch order and the augmentation
            (:func:`run_seed`).
        stop_after: stop after this many epochs (simulated kill; outputs are then not written).

    Returns:
        The training result (``finished`` False when stopped early).
    """
    dev = pick_device(device, "finetune.device")
    tcfg = TrainConfig.from_config(settings["train"])
    spec = StrategySpec.from_config(strategy, settings["strategy"])
    run_key = (model_name, dataset, strategy)
    seed = run_seed(global_seed, train_seed)
    model, train_data, val_data, report = _prepare_run(base_checkpoint, spec, run_key, seed, train_shard,
                                                       val_shard, settings["train"])
    state_path = state_path_for(checkpoint_out)
    result = train(model, train_data, val_data, tcfg, run_key=run_key, global_seed=seed,
                   state_path=state_path, device=dev, stop_after=stop_after, progress=progress,
                   on_epoch=lambda h: write_history_csv(log_csv, h))
    if not result.finished:
        return result
    meta = {
        "model": model_name, "dataset": dataset, "strategy": strategy, "train_seed": train_seed,
        "strategy_settings": spec.structure(),
        "base_checkpoint": str(base_checkpoint) if base_checkpoint is not None else None,
        "base_checkpoint_sha256": model.checkpoint_hash,
        **_trained_record(report, result, tcfg.epochs),
        **run_record(result, settings, n_train=len(train_data), n_val=len(val_data), global_seed=global_seed,
                     device=dev, selection="best mean Dice on the validation split"),
    }
    title = f"{model_name} / {dataset} / {strategy} / seed {train_seed}"
    _write_run_outputs(result, meta, title, checkpoint_out=checkpoint_out, log_csv=log_csv,
                       curve_png=curve_png, state_path=state_path if not keep_state else None)
    return result


def _prepare_run(base_checkpoint: str | Path | None, spec: StrategySpec, run_key: tuple[str, str, str],
                 seed: int, train_shard: str | Path, val_shard: str | Path, train_settings: Mapping[str, Any],
                 ) -> tuple[torch.nn.Module, SegData, SegData, StrategyReport]:
    """Build model ``run_key[0]`` from its base weights, load the splits, seed torch from the run and apply
    the strategy (in this order: the strategy's new parameters draw from the seeded RNG)."""
    from medfm_robust.seg.models import build_model

    model_name, dataset, strategy = run_key
    model = build_model(model_name, checkpoint=base_checkpoint, strict=True)
    train_data, val_data = load_split_pair(train_shard, val_shard, train_settings)
    torch.manual_seed(seed_for("finetune-init", *run_key, global_seed=seed))
    report = apply_strategy(model, spec)
    log.info("%s: %s trains %d of %d parameters (%d tensors)", dataset, strategy, report.trainable_params,
             report.total_params, len(report.trainable_names))
    return model, train_data, val_data, report


def load_split_pair(train_shard: str | Path, val_shard: str | Path,
                    train_settings: Mapping[str, Any]) -> tuple[SegData, SegData]:
    """The train and validation splits at the settings' ``image_size``, each capped at its
    ``max_train_images`` / ``max_val_images``."""
    size = train_settings.get("image_size")
    train_data = load_split(train_shard, size=size, max_images=train_settings.get("max_train_images"))
    val_data = load_split(val_shard, size=size, max_images=train_settings.get("max_val_images"))
    return train_data, val_data


def _trained_record(report: StrategyReport, result: TrainResult, epochs: int) -> dict[str, Any]:
    """The sidecar fields of what was trained and how well it did on the validation split."""
    return {
        "trainable_params": report.trainable_params,
        "total_params": report.total_params,
        "trained_tensors": len(result.best_state),
        "lora_modules": report.lora_modules,
        "best_epoch": result.best_epoch,
        "val_dice": result.best_val_dice,
        "val_dice_zero_shot": result.zero_shot_val_dice,
        "epochs": epochs,
    }


def _write_run_outputs(result: TrainResult, meta: Mapping[str, Any], title: str, *,
                       checkpoint_out: str | Path, log_csv: str | Path, curve_png: str | Path,
                       state_path: Path | None) -> None:
    """Per-epoch CSV, loss/Dice curve, checkpoint + sidecar; removes ``state_path`` (the resumable state,
    when it is not to be kept)."""
    write_history_csv(log_csv, result.history)
    plot_history(curve_png, result.history, title, result.zero_shot_val_dice, result.best_epoch)
    save_finetuned(checkpoint_out, result.best_state, meta)
    if state_path is not None and state_path.exists():
        state_path.unlink()
    log.info("%s: best epoch %d, val Dice %.4f (before training %.4f) in %.1f s", title, result.best_epoch,
             result.best_val_dice, result.zero_shot_val_dice, result.seconds)
