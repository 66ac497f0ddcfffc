"""Training loss and validation Dice for box-prompted segmentation fine-tuning.

The loss is ``w_bce * BCE + w_dice * soft-Dice`` on per-pixel logits (the paper: 0.3 / 0.7), computed in fp32
whatever the autocast state, averaged over the images of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_EPS = 1e-5


def seg_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    bce_weight: float = 0.3,
    dice_weight: float = 0.7,
) -> torch.Tensor:
    """Weighted BCE + soft-Dice loss.

    Args:
        logits: ``B x 1 x H x W`` (or ``B x H x W``) raw mask logits, any float dtype.
        target: same spatial shape, values in {0, 1} (any dtype).
        bce_weight: weight of the mean binary cross-entropy with logits.
        dice_weight: weight of ``1 - soft Dice`` (per image, on sigmoid probabilities, then averaged).

    Returns:
        A scalar fp32 tensor.
    """
    logits = logits.float().reshape(logits.shape[0], -1)
    target = target.float().reshape(target.shape[0], -1)
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=1)
    dice = (2 * inter + DICE_EPS) / (prob.sum(dim=1) + target.sum(dim=1) + DICE_EPS)
    return (bce_weight * bce + dice_weight * (1.0 - dice)).mean()


def hard_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image Dice of ``logits > 0`` against a binary target.

    Args:
        logits: ``B x 1 x H x W`` or ``B x H x W`` logits.
        target: same shape, {0, 1}.

    Returns:
        ``B`` fp32 tensor in [0, 1]. Convention: an empty prediction on an empty target scores 1.
    """
    pred = (logits.detach().float() > 0).reshape(logits.shape[0], -1)
    gt = (target.float() > 0.5).reshape(target.shape[0], -1)
    inter = (pred & gt).sum(dim=1).float()
    total = pred.sum(dim=1).float() + gt.sum(dim=1).float()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
