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

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medfm_robust.config import config_hash
from medfm_robust.errors import ConfigError
from medfm_robust.io import atomic_path
from medfm_robust.seeding import seed_for
from medfm_robust.seg.augment import AugmentConfig, SegData, epoch_order, make_batch
from medfm_robust.seg.losses import hard_dice, seg_loss
from medfm_robust.seg.strategies import (
    count_parameters,
    encoder_blocks,
    restore_trained_state,
    set_train_mode,
    trained_state,
)

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds")


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (one strategy's resolved ``finetune`` settings)."""

    epochs: int = 4
    batch_size: int = 8
    micro_batch_size: int | None = None
    activation_checkpointing: bool = False
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    encoder_lr_scale: float = 1.0
    grad_clip: float = 1.0
    amp: bool = True
    bce_weight: float = 0.3
    dice_weight: float = 0.7
    eval_batch_size: int = 16
    cache_frozen_embeddings: bool = False
    box_target_epochs: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TrainConfig:
        """Build from a resolved config mapping; keys that are not training settings are ignored."""
        known = {f for f in cls.__dataclass_fields__ if f not in ("augment",)}
        kwargs: dict[str, Any] = {k: cfg[k] for k in known if k in cfg}
        loss = cfg.get("loss") or {}
        if "bce" in loss:
            kwargs["bce_weight"] = float(loss["bce"])
        if "dice" in loss:
            kwargs["dice_weight"] = float(loss["dice"])
        out = cls(**kwargs, augment=AugmentConfig.from_config(cfg.get("augment")))
        if out.epochs < 1 or out.batch_size < 1 or out.lr <= 0:
            raise ConfigError("finetune: epochs and batch_size must be >= 1 and lr > 0")
        if out.micro_batch_size is not None and not 1 <= out.micro_batch_size <= out.batch_size:
            raise ConfigError(
                f"finetune: micro_batch_size ({out.micro_batch_size}) must be between 1 and batch_size "
                f"({out.batch_size})"
            )
        return out

    @property
    def micro(self) -> int:
        """Images per forward/backward pass (``micro_batch_size``, default ``batch_size``)."""
        return self.micro_batch_size or self.batch_size

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for hashing and sidecars)."""
        return asdict(self)


@dataclass
class TrainResult:
    """Outcome of :func:`train` (``finished`` is False when stopped early by ``stop_after``)."""

    finished: bool
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_dice: float
    zero_shot_val_dice: float
    history: list[dict[str, float]]
    trainable_params: int
    total_params: int
    seconds: float


def micro_batches(index: Sequence[int], micro: int) -> list[tuple[list[int], float]]:
    """Split one batch's indices into slices of at most ``micro`` and each slice's loss weight
    ``len(slice) / len(batch)`` (the weights sum to 1, so sum_k w_k * mean_loss_k = the batch mean)."""
    n = len(index)
    return [(list(index[i : i + micro]), min(micro, n - i) / n) for i in range(0, n, micro)]


@contextlib.contextmanager
def activation_checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the context, each image-encoder block of ``model`` (``strategies.encoder_blocks``) recomputes
    its activations during backward (``torch.utils.checkpoint``, non-reentrant, RNG state preserved so
    dropout draws repeat) when gradients are enabled and flow through it (a trainable parameter or an input
    that requires grad; frozen blocks on a frozen path run plainly). Forwards are restored on exit; the
    trainable flags are read on entry."""
    if not enabled:
        yield
        return
    from torch.utils.checkpoint import checkpoint

    blocks = encoder_blocks(model.image_encoder)

    def wrap(block: nn.Module) -> Callable[..., Any]:
        plain = block.forward

        trains = any(p.requires_grad for p in block.parameters())

        def forward(*args: Any, **kwargs: Any) -> Any:
            needs_graph = trains or any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
            if torch.is_grad_enabled() and block.training and needs_graph:
                return checkpoint(plain, *args, use_reentrant=False, **kwargs)
            return plain(*args, **kwargs)

        return forward

    for block in blocks:
        block.forward = wrap(block)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for block in blocks:
            del block.forward  # back to the class's forward


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups: one at ``cfg.lr``; with ``encoder_lr_scale`` != 1, every trainable parameter
    whose name contains "encoder" (image AND prompt encoder, as the original code's rule) goes to a second
    group at ``lr x encoder_lr_scale`` (group 0 keeps the base lr)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.encoder_lr_scale == 1.0:
        return [{"params": [p for _, p in named]}]
    base = [p for n, p in named if "encoder" not in n]
    enc = [p for n, p in named if "encoder" in n]
    groups = [{"params": base}] if base else []
    if enc:
        groups.append({"params": enc, "lr": cfg.lr * cfg.encoder_lr_scale})
    return groups


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up ``(step + 1) / warmup`` then cosine decay from 1 to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


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
    from tqdm.auto import tqdm

    device = torch.device(device)
    t0 = time.perf_counter()
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable, total = count_parameters(model)
    if not params:
        raise ConfigError(f"run {'/'.join(run_key)}: nothing to train (zero_shot?)")
    steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = max(1, int(cfg.warmup_fraction * total_steps)) if cfg.warmup_fraction > 0 else 0
    optim = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_factor(s, total_steps, warmup))
    use_amp = bool(cfg.amp and device.type == "cuda")
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    loss_w = (cfg.bce_weight, cfg.dice_weight)
    fingerprint = config_hash(
        {
            "cfg": cfg.as_dict(),
            "run": list(run_key),
            "seed": global_seed,
            "train": train_data.image_ids,
            "val": val_data.image_ids,
            "trainable": trainable,
            "total": total,
            # a state trained from other base weights (e.g. a re-pretrained tiny SAM) must not be resumed
            "base": str(getattr(model, "checkpoint_hash", "")),
        }
    )
    seg = Segmenter(model)
    size = tuple(train_data.masks.shape[-2:])
    cache = cfg.cache_frozen_embeddings and _encoder_frozen(model)
    train_emb = _embed_all(seg, train_data, cfg.eval_batch_size, device) if cache else None
    val_emb = _embed_all(seg, val_data, cfg.eval_batch_size, device) if cache else None
    augment = cfg.augment
    if cache:
        log.info("frozen encoder: embeddings cached; training augmentation reduced to box jitter")
        augment = AugmentConfig(hflip=0, vflip=0, rot90=0, intensity=0, box_jitter=cfg.augment.box_jitter)

    resumed = _load_state(state_path, fingerprint, device)
    if resumed is not None:
        restore_trained_state(model, resumed["trained"], source=str(state_path))
        optim.load_state_dict(resumed["optimizer"])
        sched.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        start_epoch = int(resumed["epoch"])
        best_state, best_epoch, best_dice = (
            resumed["best_state"],
            int(resumed["best_epoch"]),
            resumed["best_dice"],
        )
        zero_dice, history = float(resumed["zero_shot_dice"]), list(resumed["history"])
        _set_rng_state(resumed["rng"], device)
        log.info("resumed %s from epoch %d (%s)", "/".join(run_key), start_epoch, state_path)
    else:
        torch.manual_seed(seed_for("finetune-torch", *run_key, global_seed=global_seed))
        start_epoch, best_state, best_epoch, best_dice = 0, trained_state(model), 0, -1.0
        _, zero_dice, _ = evaluate(
            model,
            val_data,
            batch_size=cfg.eval_batch_size,
            device=device,
            loss_weights=loss_w,
            embeddings=val_emb,
        )
        history = []
        log.info("%s: validation Dice before training %.4f", "/".join(run_key), zero_dice)

    finished = False
    with activation_checkpointing(model, cfg.activation_checkpointing):
        for done_here, epoch in enumerate(range(start_epoch, cfg.epochs), start=1):
            te = time.perf_counter()
            set_train_mode(model)
            order = epoch_order(train_data, epoch, global_seed)
            batches = [order[i : i + cfg.batch_size].tolist() for i in range(0, len(order), cfg.batch_size)]
            run_loss, seen = 0.0, 0
            bar = tqdm(
                batches,
                desc=f"{'/'.join(run_key)} epoch {epoch + 1}/{cfg.epochs}",
                disable=not progress,
                leave=False,
            )
            for idx in bar:
                optim.zero_grad(set_to_none=True)
                batch_loss = 0.0
                for part, weight in micro_batches(idx, cfg.micro):
                    x, m, b = make_batch(
                        train_data,
                        part,
                        augment=augment,
                        epoch=epoch,
                        global_seed=global_seed,
                        box_targets=epoch < cfg.box_target_epochs,
                    )
                    emb = train_emb[part] if train_emb is not None else None
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        logits = seg.logits(x.to(device), b.to(device), size, emb)
                    target = m[:, None].to(device)
                    loss = seg_loss(logits, target, bce_weight=loss_w[0], dice_weight=loss_w[1])
                    scaler.scale(loss * weight).backward()
                    batch_loss += float(loss.detach()) * weight
                if cfg.grad_clip and cfg.grad_clip > 0:
                    scaler.unscale_(optim)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optim)
                scaler.update()
                sched.step()
                run_loss += batch_loss * len(idx)
                seen += len(idx)
                bar.set_postfix(loss=f"{batch_loss:.4f}")
            val_loss, val_dice, _ = evaluate(
                model,
                val_data,
                batch_size=cfg.eval_batch_size,
                device=device,
                loss_weights=loss_w,
                embeddings=val_emb,
            )
            if val_dice > best_dice:
                best_state, best_epoch, best_dice = trained_state(model), epoch + 1, val_dice
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": run_loss / seen,
                    "val_loss": val_loss,
                    "val_dice": val_dice,
                    "lr": optim.param_groups[0]["lr"],
                    "seconds": time.perf_counter() - te,
                }
            )
            log.info(
                "%s epoch %d: train loss %.4f, val loss %.4f, val Dice %.4f",
                "/".join(run_key),
                epoch + 1,
                run_loss / seen,
                val_loss,
                val_dice,
            )
            if state_path is not None:
                _save_state(
                    state_path,
                    {
                        "fingerprint": fingerprint,
                        "epoch": epoch + 1,
                        "trained": trained_state(model),
                        "optimizer": optim.state_dict(),
                        "scheduler": sched.state_dict(),
                        "scaler": scaler.state_dict(),
                        "best_state": best_state,
                        "best_epoch": best_epoch,
                        "best_dice": best_dice,
                        "zero_shot_dice": zero_dice,
                        "history": history,
                        "rng": _rng_state(device),
                    },
                )
            if on_epoch is not None:
                on_epoch(history)
            if stop_after is not None and done_here >= stop_after and epoch + 1 < cfg.epochs:
                break
        else:
            finished = True
    return TrainResult(
        finished,
        best_state,
        best_epoch,
        best_dice,
        zero_dice,
        history,
        trainable,
        total,
        time.perf_counter() - t0,
    )


def _save_state(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: str | Path | None, fingerprint: str, device: torch.device) -> dict[str, Any] | None:
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a corrupt state is not trusted: start over
        log.warning("ignoring unreadable training state %s (%s)", path, exc)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("ignoring training state %s: written for other settings or data", path)
        return None
    return state
