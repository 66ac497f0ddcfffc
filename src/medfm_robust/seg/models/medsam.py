"""MedSAM: SAM ViT-B fine-tuned on medical masks, with ``MedSAM_Inference.py``'s preprocessing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medfm_robust.seg.models.base import PromptableSegmenter, sam_modules
from medfm_robust.seg.models.preprocess import (
    as_rgb,
    as_uint8_levels,
    minmax_per_image,
    scale_boxes,
    skimage_cubic_resize,
    straight_through,
)
from medfm_robust.seg.models.registry import register_model


class MedSAMSegmenter(PromptableSegmenter):
    """MedSAM (``MedSAM_Inference.py``): SAM ViT-B at 1024.

    ``round(x * 255)`` (the uint8 image the script reads), resize to ``1024 x 1024`` (aspect ratio NOT
    kept) with skimage's order-3 anti-aliased resize (exact, as a linear operator in float64, clipped to the
    input range), truncation to uint8 (``.astype(np.uint8)``; straight-through gradient), then per-image
    min-max to [0, 1] (no mean/std). Box:
    ``box / [W, H, W, H] * 1024``. Post-processing: sigmoid of the 256 x 256 low-res logits, bilinear to the
    original size, returned as logits (``log p - log(1 - p)``, p clamped to [1e-7, 1 - 1e-7]) so that
    ``logit > 0`` is exactly MedSAM's ``p > 0.5``.
    """

    name = "medsam"
    input_size = 1024

    def preprocess(self, x01: torch.Tensor) -> torch.Tensor:
        x = skimage_cubic_resize(as_uint8_levels(as_rgb(x01)).double(), (self.input_size, self.input_size))
        return minmax_per_image(straight_through(x, torch.floor).to(x01.dtype))

    def input_boxes(self, boxes_px: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        return scale_boxes(boxes_px, orig_hw, (self.input_size, self.input_size))

    def postprocess(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        prob = F.interpolate(torch.sigmoid(low_res), orig_hw, mode="bilinear", align_corners=False)
        prob = prob.clamp(1e-7, 1.0 - 1e-7)
        return torch.log(prob) - torch.log1p(-prob)


@register_model(
    "medsam", family="sam_vit_b", input_size=1024,
    normalisation="per-image min-max to [0,1] after skimage cubic resize to 1024x1024",
    checkpoint_file="medsam_vit_b.pth", description="MedSAM (SAM ViT-B fine-tuned on medical masks)",
)
def build_medsam() -> MedSAMSegmenter:
    """MedSAM architecture (SAM ViT-B, 1024 input), random weights."""
    return MedSAMSegmenter(*sam_modules(768, 12, 12, (2, 5, 8, 11), 1024))
