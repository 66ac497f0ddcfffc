"""Resumable, seeded training loop shared by fine-tuning and tiny-SAM pretraining.

AdamW, linear warm-up then cosine decay (stepped per optimiser step), gradient-norm clipping, autocast +
gradient scaling on CUDA only, BCE + Dice loss, model selection on the validation split (best mean Dice,
strictly greater; the test split is never read). One optimiser step per ``batch_size`` images; with
``micro_batch_size`` < ``batch_size`` the batch is forwarded in slices whose losses are weighted by their
share of the batch, so the accumulated gradient is the full batch's mean gradient (the last slice may be
smaller). ``activation_checkpointing`` recomputes each image-encoder block's activations in the backward
pass instead of storing them (same gradients, less memory, ~30% more compute).

The full training state (trained tensors, optimiser, scheduler, scaler, epoch, best tensors, history, torch
RNG states) is written atomically after every epoch, so a killed run restarted with the same settings
continues and ends with the same weights as an uninterrupted run (bitwise on the CPU).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medfm_robust.config import config_hash
from medfm_robust.errors import ConfigError
from medfm_robust.resume import read_resume_state, write_resume_state
from medfm_robust.seeding import seed_for
from medfm_robust.seg.augment import AugmentConfig, SegData, epoch_order, make_batch
from medfm_robust.seg.losses import hard_dice, seg_loss
from medfm_robust.seg.strategies import (
    count_parameters,
    restore_trained_state,
    set_train_mode,
    trained_state,
)
from medfm_robust.seg.train_setup import (  # noqa: F401 (TrainConfig, TrainResult, ...: this module's API)
    HISTORY_COLUMNS,
    Optimisation,
    TrainConfig,
    TrainResult,
    activation_checkpointing,
    lr_factor,
    micro_batches,
    param_groups,
)

log = logging.getLogger(__name__)

class Segmenter:
    """Calls a ``PromptableSegmenter``-style model and returns logits at the mask resolution.

    With ``embeddings`` (``N x ...`` tensor aligned with a :class:`SegData`), the frozen encoder is skipped.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.dtype = next(model.parameters()).dtype

    def logits(
        self, x01: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``B x 1 x H x W`` logits for ``x01`` (``B x 3 x H x W`` in [0, 1]) and ``B x 4`` pixel boxes
        (both cast to the model's parameter dtype, e.g. float64 for exactness tests)."""
        x01, boxes = x01.to(self.dtype), boxes.to(self.dtype)
        out = self.model(x01, boxes) if emb is None else self.model.decode(emb, boxes, size)
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out.float(), size=size, mode="bilinear", align_corners=False)
        return out

    @torch.no_grad()
    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """Image embeddings from the (frozen) encoder."""
        return self.model.encode(x01.to(self.dtype))


def _encoder_frozen(model: nn.Module) -> bool:
    return not any(p.requires_grad for p in model.image_encoder.parameters())


@torch.no_grad()
def _embed_all(seg: Segmenter, data: SegData, batch: int, device: torch.device) -> torch.Tensor:
    outs = []
    for start in range(0, len(data), batch):
        idx = list(range(start, min(len(data), start + batch)))
        outs.append(seg.encode(data.x01(idx).to(device)))
    return torch.cat(outs)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: SegData,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    loss_weights: tuple[float, float] = (0.3, 0.7),
    embeddings: torch.Tensor | None = None,
) -> tuple[float, float, torch.Tensor]:
    """Score ``model`` in ``eval()`` mode with tight boxes and no augmentation.

    Returns:
        ``(mean loss, mean Dice, per-image Dice tensor)``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    seg = Segmenter(model)
    size = tuple(data.masks.shape[-2:])
    losses, dices = [], []
    for start in range(0, len(data), batch_size):
        idx = list(range(start, min(len(data), start + batch_size)))
        x, m, b = make_batch(data, idx, augment=None, epoch=0, global_seed=0)
        emb = embeddings[idx].to(device) if embeddings is not None else None
        logits = seg.logits(x.to(device), b.to(device), size, emb)
        target = m[:, None].to(device)
        losses.append(
            float(seg_loss(logits, target, bce_weight=loss_weights[0], dice_weight=loss_weights[1]))
            * len(idx)
        )
        dices.append(hard_dice(logits, target).cpu())
    model.train(was_training)
    per_image = torch.cat(dices)
    return sum(losses) / len(data), float(per_image.mean()), per_image


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class _Run:
    """What stays fixed during one run: model, data, settings and the cached frozen-encoder embeddings."""

    model: nn.Module
    seg: Segmenter
    train_data: SegData
    val_data: SegData
    cfg: TrainConfig
    run_key: tuple[str, ...]
    global_seed: int
    device: torch.device
    augment: AugmentConfig
    train_emb: torch.Tensor | None
    val_emb: torch.Tensor | None

    @classmethod
    def create(cls, model: nn.Module, train_data: SegData, val_data: SegData, cfg: TrainConfig,
               run_key: tuple[str, ...], global_seed: int, device: torch.device) -> _Run:
        """Embeds both splits once when the encoder is frozen and ``cache_frozen_embeddings`` is on."""
        seg = Segmenter(model)
        cache = cfg.cache_frozen_embeddings and _encoder_frozen(model)
        train_emb = _embed_all(seg, train_data, cfg.eval_batch_size, device) if cache else None
        val_emb = _embed_all(seg, val_data, cfg.eval_batch_size, device) if cache else None
        augment = cfg.augment
        if cache:
            log.info("frozen encoder: embeddings cached; training augmentation reduced to box jitter")
            augment = AugmentConfig(hflip=0, vflip=0, rot90=0, intensity=0, box_jitter=cfg.augment.box_jitter)
        return cls(model, seg, train_data, val_data, cfg, run_key, global_seed, device, augment, train_emb,
                   val_emb)

    @property
    def name(self) -> str:
        """The run key joined with ``/`` (for messages)."""
        return "/".join(self.run_key)

    @property
    def loss_weights(self) -> tuple[float, float]:
        """``(bce, dice)`` loss weights."""
        return (self.cfg.bce_weight, self.cfg.dice_weight)

    def validate(self) -> tuple[float, float]:
        """``(mean loss, mean Dice)`` on the validation split."""
        loss, dice, _ = evaluate(self.model, self.val_data, batch_size=self.cfg.eval_batch_size,
                                 device=self.device, loss_weights=self.loss_weights, embeddings=self.val_emb)
        return loss, dice

    def fingerprint(self, trainable: int, total: int) -> str:
        """Hash of everything a resumable state depends on."""
        return config_hash(
            {
                "cfg": self.cfg.as_dict(),
                "run": list(self.run_key),
                "seed": self.global_seed,
                "train": self.train_data.image_ids,
                "val": self.val_data.image_ids,
                "trainable": trainable,
                "total": total,
                # a state trained from other base weights (e.g. a re-pretrained tiny SAM) must not be resumed
                "base": str(getattr(self.model, "checkpoint_hash", "")),
            }
        )

    def train_epoch(self, opt: Optimisation, epoch: int, progress: bool) -> float:
        """One epoch of optimiser steps (micro-batched); returns the mean training loss per image."""
        from tqdm.auto import tqdm

        cfg, data = self.cfg, self.train_data
        size = tuple(data.masks.shape[-2:])
        order = epoch_order(data, epoch, self.global_seed)
        batches = [order[i : i + cfg.batch_size].tolist() for i in range(0, len(order), cfg.batch_size)]
        run_loss, seen = 0.0, 0
        desc = f"{self.name} epoch {epoch + 1}/{cfg.epochs}"
        bar = tqdm(batches, desc=desc, disable=not progress, leave=False)
        for idx in bar:
            opt.optim.zero_grad(set_to_none=True)
            batch_loss = 0.0
            for part, weight in micro_batches(idx, cfg.micro):
                x, m, b = make_batch(data, part, augment=self.augment, epoch=epoch,
                                     global_seed=self.global_seed, box_targets=epoch < cfg.box_target_epochs)
                emb = self.train_emb[part] if self.train_emb is not None else None
                with torch.autocast(self.device.type, dtype=opt.amp_dtype, enabled=opt.use_amp):
                    logits = self.seg.logits(x.to(self.device), b.to(self.device), size, emb)
                target = m[:, None].to(self.device)
                loss = seg_loss(logits, target, bce_weight=cfg.bce_weight, dice_weight=cfg.dice_weight)
                opt.scaler.scale(loss * weight).backward()
                batch_loss += float(loss.detach()) * weight
            opt.step(cfg.grad_clip)
            run_loss += batch_loss * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{batch_loss:.4f}")
        return run_loss / seen


@dataclass
class _Progress:
    """Where a run stands: next epoch, best tensors so far, zero-shot Dice and the per-epoch history."""

    start_epoch: int
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_dice: float
    zero_dice: float
    history: list[dict[str, float]]

    @classmethod
    def start(cls, run: _Run, opt: Optimisation, state_path: str | Path | None,
              fingerprint: str) -> _Progress:
        """Resume from ``state_path`` when it holds a state with this ``fingerprint``; else seed torch's RNG
        from the run and score the untrained model."""
        resumed = read_resume_state(state_path, fingerprint)
        if resumed is None:
            torch.manual_seed(seed_for("finetune-torch", *run.run_key, global_seed=run.global_seed))
            best_state = trained_state(run.model)
            _, zero_dice = run.validate()
            log.info("%s: validation Dice before training %.4f", run.name, zero_dice)
            return cls(0, best_state, 0, -1.0, zero_dice, [])
        restore_trained_state(run.model, resumed["trained"], source=str(state_path))
        opt.load_state_dict(resumed)
        _set_rng_state(resumed["rng"], run.device)
        log.info("resumed %s from epoch %d (%s)", run.name, int(resumed["epoch"]), state_path)
        return cls(int(resumed["epoch"]), resumed["best_state"], int(resumed["best_epoch"]),
                   resumed["best_dice"], float(resumed["zero_shot_dice"]), list(resumed["history"]))

    def record(self, run: _Run, opt: Optimisation, epoch: int, train_loss: float,
               seconds_since: float) -> None:
        """Validate after ``epoch`` (0-based), keep the best tensors, append the history row."""
        val_loss, val_dice = run.validate()
        if val_dice > self.best_dice:
            self.best_state, self.best_epoch, self.best_dice = trained_state(run.model), epoch + 1, val_dice
        self.history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_dice": val_dice,
                "lr": opt.optim.param_groups[0]["lr"],
                "seconds": time.perf_counter() - seconds_since,
            }
        )
        log.info("%s epoch %d: train loss %.4f, val loss %.4f, val Dice %.4f", run.name, epoch + 1,
                 train_loss, val_loss, val_dice)

    def state(self, run: _Run, opt: Optimisation, fingerprint: str, epochs_done: int) -> dict[str, Any]:
        """The resumable state after ``epochs_done`` epochs."""
        return {
            "fingerprint": fingerprint,
            "epoch": epochs_done,
            "trained": trained_state(run.model),
            **opt.state_dict(),
            "best_state": self.best_state,
            "best_epoch": self.best_epoch,
            "best_dice": self.best_dice,
            "zero_shot_dice": self.zero_dice,
            "history": self.history,
            "rng": _rng_state(run.device),
        }


def train(
    model: nn.Module,
    train_data: SegData,
    val_data: SegData,
    cfg: TrainConfig,
    *,
    run_key: tuple[str, ...],
    global_seed: int = 0,
    state_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    stop_after: int | None = None,
    on_epoch: Callable[[list[dict[str, float]]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the trainable tensors of ``model`` (strategy already applied) and select on ``val_data``.

    Args:
        model: a SAM-family segmenter whose ``requires_grad`` flags define what is trained.
        train_data, val_data: in-memory splits with equal image size.
        cfg: hyper-parameters.
        run_key: identity of the run (e.g. model, dataset, strategy); seeds and the resume fingerprint use it.
        global_seed: the workflow's seed.
        state_path: where the resumable state is written after every epoch; an existing state with the same
            fingerprint is resumed, one with another fingerprint is ignored (and overwritten).
        device: where to train; mixed precision is used only on CUDA (and only if ``cfg.amp``).
        stop_after: stop after this many epochs *in this call* (simulates a killed job; for tests).
        on_epoch: called with the history after every epoch (e.g. to write the CSV log).
        progress: show tqdm bars.
    """
    device = torch.device(device)
    t0 = time.perf_counter()
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable, total = count_parameters(model)
    if not params:
        raise ConfigError(f"run {'/'.join(run_key)}: nothing to train (zero_shot?)")
    opt = Optimisation.create(model, cfg, params, len(train_data), device)
    run = _Run.create(model, train_data, val_data, cfg, run_key, global_seed, device)
    fingerprint = run.fingerprint(trainable, total)
    done = _Progress.start(run, opt, state_path, fingerprint)
    finished = False
    with activation_checkpointing(model, cfg.activation_checkpointing):
        for done_here, epoch in enumerate(range(done.start_epoch, cfg.epochs), start=1):
            te = time.perf_counter()
            set_train_mode(model)
            done.record(run, opt, epoch, run.train_epoch(opt, epoch, progress), te)
            if state_path is not None:
                write_resume_state(state_path, done.state(run, opt, fingerprint, epoch + 1))
            if on_epoch is not None:
                on_epoch(done.history)
            if stop_after is not None and done_here >= stop_after and epoch + 1 < cfg.epochs:
                break
        else:
            finished = True
    return TrainResult(finished, done.best_state, done.best_epoch, done.best_dice, done.zero_dice,
                       done.history, trainable, total, time.perf_counter() - t0)
