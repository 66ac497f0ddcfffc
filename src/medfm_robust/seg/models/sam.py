"""Segment Anything ViT-B with SAM's own preprocessing (``SamLongestSide``, also the base of tiny SAM)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medfm_robust.seg.models.base import PromptableSegmenter, sam_modules
from medfm_robust.seg.models.preprocess import (
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    as_rgb,
    as_uint8_levels,
    longest_side_hw,
    pad_bottom_right,
    resize_axis,
    round_half_up,
    scale_boxes,
)
from medfm_robust.seg.models.registry import register_model


class SamLongestSide(PromptableSegmenter):
    """SAM's own preprocessing (``sam_vit_b``).

    ``round(x * 255)`` (the uint8 image ``SamPredictor.set_image`` takes) -> resize of the longest side to
    S as ``ResizeLongestSide.apply_image`` does it with PIL on uint8: bilinear (antialiased), horizontal
    pass, rounding to uint8, vertical pass, rounding to uint8 (rounding as straight-through estimators)
    -> ``(x - pixel_mean) / pixel_std`` (0-255 units) -> zero padding bottom/right to ``S x S``. Boxes are
    scaled by the resize factor per axis. Logits: bilinear to ``S x S``, crop the unpadded part, bilinear
    to the original size (``Sam.postprocess_masks``).
    """

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module,
                 input_size: int, name: str, pixel_mean: Sequence[float] = SAM_PIXEL_MEAN,
                 pixel_std: Sequence[float] = SAM_PIXEL_STD) -> None:
        super().__init__(image_encoder, prompt_encoder, mask_decoder)
        self.input_size = input_size
        self.name = name
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, x01: torch.Tensor) -> torch.Tensor:
        x = as_uint8_levels(as_rgb(x01)).double()  # float64: exact fixed-point sums
        h, w = x.shape[-2:]
        nh, nw = longest_side_hw(h, w, self.input_size)
        if nw != w:
            x = round_half_up(resize_axis(x, "pil_bilinear", nw, -1)).clamp(0.0, 255.0)
        if nh != h:
            x = round_half_up(resize_axis(x, "pil_bilinear", nh, -2)).clamp(0.0, 255.0)
        x = (x.to(x01.dtype) - self.pixel_mean) / self.pixel_std
        return pad_bottom_right(x, self.input_size)

    def input_boxes(self, boxes_px: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        return scale_boxes(boxes_px, orig_hw, longest_side_hw(*orig_hw, self.input_size))

    def postprocess(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        s = self.input_size
        nh, nw = longest_side_hw(*orig_hw, s)
        x = F.interpolate(low_res, (s, s), mode="bilinear", align_corners=False)
        x = x[..., :nh, :nw]
        return F.interpolate(x, orig_hw, mode="bilinear", align_corners=False)


@register_model(
    "sam_vit_b", family="sam_vit_b", input_size=1024,
    normalisation="SAM pixel mean/std on 0-255, longest side 1024, zero pad",
    checkpoint_file="sam_vit_b_01ec64.pth", description="Segment Anything ViT-B",
)
def build_sam_vit_b() -> SamLongestSide:
    """Original SAM ViT-B (1024 input), random weights."""
    return SamLongestSide(*sam_modules(768, 12, 12, (2, 5, 8, 11), 1024), input_size=1024, name="sam_vit_b")
