"""Training settings and optimisation: :class:`TrainConfig`, :class:`TrainResult`, AdamW parameter groups,
the warm-up + cosine schedule, micro-batch weights, :class:`Optimisation` (optimiser, schedule and gradient
scaling of one run, with its resumable state) and activation checkpointing. Used by
:mod:`medfm_robust.seg.trainer`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from medfm_robust.errors import ConfigError
from medfm_robust.seg.augment import AugmentConfig
from medfm_robust.seg.model_parts import encoder_blocks

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


@dataclass
class Optimisation:
    """The trained parameters, AdamW with its warm-up + cosine schedule, and autocast / gradient scaling."""

    params: list[nn.Parameter]
    optim: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype

    @classmethod
    def create(cls, model: nn.Module, cfg: TrainConfig, params: list[nn.Parameter], n_train: int,
               device: torch.device) -> Optimisation:
        """AdamW over ``param_groups``; the schedule counts one step per batch of ``n_train`` images."""
        total_steps = cfg.epochs * math.ceil(n_train / cfg.batch_size)
        warmup = max(1, int(cfg.warmup_fraction * total_steps)) if cfg.warmup_fraction > 0 else 0
        optim = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_factor(s, total_steps, warmup))
        use_amp = bool(cfg.amp and device.type == "cuda")
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        return cls(params, optim, sched, scaler, use_amp, amp_dtype)

    def step(self, grad_clip: float) -> None:
        """Clip (when ``grad_clip`` > 0), step the optimiser, the scaler and the schedule."""
        if grad_clip and grad_clip > 0:
            self.scaler.unscale_(self.optim)
            torch.nn.utils.clip_grad_norm_(self.params, grad_clip)
        self.scaler.step(self.optim)
        self.scaler.update()
        self.sched.step()

    def state_dict(self) -> dict[str, Any]:
        """Optimiser, scheduler and scaler states (for the resumable state)."""
        return {"optimizer": self.optim.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.optim.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


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
