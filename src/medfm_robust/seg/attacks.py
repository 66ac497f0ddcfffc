"""Untargeted L-infinity attacks (FGSM, PGD) on box-prompted segmenters, in [0, 1] pixel space.

The loss is the binary cross-entropy between the model's logits (at the original size, through the model's
full preprocessing: :meth:`PromptableSegmenter.forward`) and the ground-truth mask, averaged over each
image's pixels and summed over the batch (so every image's gradient is independent of the batch). The box
prompt is fixed (never attacked). Models must be in ``eval()`` mode (no dropout in the gradient or the
score).

Units: [0, 1] is the image's own value range (``x01 = (stored - lo) / (hi - lo)``, the shard's
``value_range``, :func:`medfm_robust.seg.models.to_unit_range`), so ``eps`` is a fraction of that range: on
a uint16 slice stored in [0, 1300], ``eps = 2/255`` allows ``2/255 * 1300 ~ 10.2`` stored units. Adversarial
images are quantised to the image's stored integer grid (:func:`quantize_to_range`; ``1/255`` steps for
8-bit images), or to ``quantize_bits`` when no value range is given.

Levels ``1..5``: ``eps = 2, 4, 6, 8, 10 / 255``; PGD with ``3, 5, 7, 10, 15`` steps of size
``2.5 * eps / steps`` from a uniform random start in the eps-ball (seeded per image and level), projected on
the eps-ball and [0, 1] after every step; the final iterate is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medfm_robust.errors import ConfigError
from medfm_robust.seeding import rng_for

log = logging.getLogger(__name__)

ATTACKS = ("fgsm", "pgd")


@dataclass(frozen=True)
class AttackSettings:
    """Attack budgets per level (``epsilons`` in 1/255 units of [0, 1] pixels) and PGD settings."""

    epsilons: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 10.0)
    pgd_steps: tuple[int, ...] = (3, 5, 7, 10, 15)
    pgd_step_factor: float = 2.5
    random_start: bool = True
    quantize_bits: int = 8

    def __post_init__(self) -> None:
        if len(self.epsilons) != len(self.pgd_steps):
            raise ConfigError(
                "segmentation.attacks: 'epsilons' and 'pgd_steps' must have one entry per level"
            )

    @property
    def levels(self) -> tuple[int, ...]:
        """Level numbers ``1..n``."""
        return tuple(range(1, len(self.epsilons) + 1))

    def eps(self, level: int) -> float:
        """Budget of ``level`` in [0, 1] pixel units."""
        return float(self.epsilons[level - 1]) / 255.0

    def steps(self, attack: str, level: int) -> int:
        """Number of gradient steps of ``attack`` at ``level`` (FGSM: 1)."""
        return 1 if attack == "fgsm" else int(self.pgd_steps[level - 1])

    def step_size(self, attack: str, level: int) -> float:
        """Step size: ``eps`` for FGSM, ``pgd_step_factor * eps / steps`` for PGD."""
        eps = self.eps(level)
        return eps if attack == "fgsm" else self.pgd_step_factor * eps / self.steps(attack, level)


def quantize(x01: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Round [0, 1] values to the ``2**bits - 1`` grid (what saving as an 8-bit image would do)."""
    scale = float(2**bits - 1)
    return torch.round(x01.clamp(0.0, 1.0) * scale) / scale


def quantize_to_range(x01: torch.Tensor, value_ranges: Sequence[Sequence[float]]) -> torch.Tensor:
    """Round each image of ``x01`` (``B x C x H x W`` in [0, 1] of its value range ``[lo, hi]``) to the
    stored integer values: ``(round(x * (hi - lo) + lo) - lo) / (hi - lo)``, clipped to [0, 1]. For
    ``[0, 255]`` this is :func:`quantize` at 8 bits, bit for bit."""
    if len(value_ranges) != x01.shape[0]:
        raise ConfigError(f"{x01.shape[0]} images but {len(value_ranges)} value ranges")
    shape = (-1,) + (1,) * (x01.ndim - 1)
    lo = torch.tensor([float(r[0]) for r in value_ranges], dtype=x01.dtype, device=x01.device).view(shape)
    span = torch.tensor(
        [float(r[1]) - float(r[0]) for r in value_ranges], dtype=x01.dtype, device=x01.device
    ).view(shape)
    return ((torch.round(x01.clamp(0.0, 1.0) * span + lo) - lo) / span).clamp(0.0, 1.0)


def attack_loss(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Sum over images of the per-image mean BCE-with-logits against the binary ``gt`` (``B x 1 x H x W``)."""
    per_pixel = F.binary_cross_entropy_with_logits(logits, gt.to(logits.dtype), reduction="none")
    return per_pixel.flatten(1).mean(dim=1).sum()


def _ensure_eval(model: torch.nn.Module) -> None:
    training = [name for name, m in model.named_modules() if m.training]
    if training:
        raise RuntimeError(f"attacks need the model in eval() mode; in training mode: {training[:5]}")


def _input_gradient(
    model: torch.nn.Module, x: torch.Tensor, boxes: torch.Tensor, gt: torch.Tensor
) -> tuple[torch.Tensor, float]:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = attack_loss(model(x, boxes), gt)
        (grad,) = torch.autograd.grad(loss, x)
    return grad, float(loss.detach())


def start_noise(
    keys: Sequence[tuple[str, str]], shape: tuple[int, ...], eps: float, level: int, seed: int
) -> torch.Tensor:
    """Uniform ``U(-eps, eps)`` start, one draw per image from (dataset, image id, level) and the seed."""
    per_image = shape[1:]
    draws = [
        rng_for("seg-pgd-start", ds, image_id, level, global_seed=seed).uniform(-eps, eps, size=per_image)
        for ds, image_id in keys
    ]
    return torch.from_numpy(np.stack(draws).astype(np.float32))


def fgsm(
    model: torch.nn.Module, x01: torch.Tensor, boxes: torch.Tensor, gt: torch.Tensor, eps: float
) -> torch.Tensor:
    """One signed-gradient step of size ``eps`` ascending the loss, clipped to [0, 1] (not quantised)."""
    _ensure_eval(model)
    grad, _ = _input_gradient(model, x01, boxes, gt)
    return (x01 + eps * grad.sign()).clamp(0.0, 1.0).detach()


def pgd(
    model: torch.nn.Module,
    x01: torch.Tensor,
    boxes: torch.Tensor,
    gt: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    start: torch.Tensor | None,
) -> tuple[torch.Tensor, float]:
    """Projected gradient ascent in the L-inf ``eps``-ball around ``x01``; returns (final iterate, last loss).

    ``start``: initial offset (``B x C x H x W``, e.g. :func:`start_noise`) or ``None`` to start at ``x01``.
    """
    _ensure_eval(model)
    x_adv = x01.clone() if start is None else (x01 + start.to(x01)).clamp(0.0, 1.0)
    loss = float("nan")
    for _ in range(steps):
        grad, loss = _input_gradient(model, x_adv, boxes, gt)
        x_adv = x_adv + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x01 - eps), x01 + eps).clamp(0.0, 1.0).detach()
    return x_adv, loss


def run_attack(
    model: torch.nn.Module,
    attack: str,
    level: int,
    settings: AttackSettings,
    x01: torch.Tensor,
    boxes: torch.Tensor,
    gt: torch.Tensor,
    keys: Sequence[tuple[str, str]],
    seed: int,
    value_ranges: Sequence[Sequence[float] | None] | None = None,
) -> torch.Tensor:
    """Adversarial batch for ``attack`` at ``level``, quantised to each image's stored grid.

    ``x01``: ``B x C x H x W`` in [0, 1] of each image's value range; ``boxes``: ``B x 4`` original-pixel
    boxes; ``gt``: ``B x 1 x H x W`` binary; ``keys``: (dataset, image id) per image for the seeded PGD
    start; ``value_ranges``: per image the shard's ``[lo, hi]`` (None entries: 8-bit, ``[0, 255]``);
    without it the result is quantised to ``settings.quantize_bits``.
    """
    if attack not in ATTACKS:
        raise ConfigError(f"unknown attack '{attack}' (known: {', '.join(ATTACKS)})")
    eps = settings.eps(level)
    if attack == "fgsm":
        x_adv = fgsm(model, x01, boxes, gt, eps)
    else:
        start = start_noise(keys, tuple(x01.shape), eps, level, seed) if settings.random_start else None
        x_adv, loss = pgd(
            model,
            x01,
            boxes,
            gt,
            eps,
            settings.steps(attack, level),
            settings.step_size(attack, level),
            start,
        )
        log.debug("pgd level %d: final loss %.4f", level, loss)
    if value_ranges is None:
        return quantize(x_adv, settings.quantize_bits)
    return quantize_to_range(x_adv, [(0.0, 255.0) if r is None else r for r in value_ranges])
