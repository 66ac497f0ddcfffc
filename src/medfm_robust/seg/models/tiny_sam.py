"""The workflow's own tiny SAM (~0.3 M parameters, 256 input), built from segment_anything's blocks."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medfm_robust.errors import DataError
from medfm_robust.seg.models.base import batched_mask_decoder, sam_modeling
from medfm_robust.seg.models.preprocess import (
    UNIT_MEAN,
    UNIT_STD,
    as_rgb,
    longest_side_hw,
    minmax_per_image,
    pad_bottom_right,
)
from medfm_robust.seg.models.registry import register_model
from medfm_robust.seg.models.sam import SamLongestSide
from medfm_robust.seg.models.sam_med2d import insert_adapters


def box_raster(boxes: torch.Tensor, input_size: int, raster_size: int) -> torch.Tensor:
    """Filled rectangles ``B x 1 x R x R`` of input-frame boxes (``B x 4``, inclusive max) at ``R x R``.

    Each cell holds the fraction of its area inside the box ``[x_min, x_max + 1) x [y_min, y_max + 1)``
    (input-frame pixels), so the raster is exact at box edges that fall inside a cell.
    """
    cell = input_size / raster_size
    edges = torch.arange(raster_size, dtype=torch.float32, device=boxes.device) * cell
    b = boxes.to(torch.float32)

    def cover(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:  # B -> B x R
        start = torch.maximum(edges[None], lo[:, None])
        end = torch.minimum(edges[None] + cell, hi[:, None])
        return ((end - start) / cell).clamp(0.0, 1.0)

    cx = cover(b[:, 0], b[:, 2] + 1.0)
    cy = cover(b[:, 1], b[:, 3] + 1.0)
    return (cy[:, :, None] * cx[:, None, :])[:, None]


class TinySamSegmenter(SamLongestSide):
    """The workflow's own tiny SAM (SAM architecture at ~0.3 M parameters, 256 input).

    Preprocessing (as MedSAM / LiteMedSAM, in torch, batched and differentiable): longest side to 256
    (bilinear, antialiased; the demo images are already 256), per-image min-max to [0, 1] over channels and
    pixels (so a 16-bit CT far below its dtype range is as visible as an 8-bit photograph), then a fixed
    standardisation with the ImageNet mean/std (SAM's pixel statistics / 255), zero padding bottom/right to
    256 x 256. Boxes are scaled by the resize factor per axis.

    Prompt: the box goes to the prompt encoder twice: as SAM's sparse box prompt (two corner tokens) AND as
    a dense mask prompt, the box rasterised as a filled rectangle (cell coverage in [0, 1]) at the prompt
    encoder's mask-input resolution (4 x the embedding grid: 64 x 64) and turned into the dense embedding
    by SAM's ``mask_downscaling`` convolutions (instead of ``no_mask_embed``). A model this small then
    localises the boxed object by convolution, rather than having to learn to attend to the corner tokens.
    The raster depends only on the box, so the forward stays differentiable w.r.t. the pixels.
    Boxes and logits as :class:`SamLongestSide` (bilinear to 256 x 256, crop the unpadded part, bilinear to
    the original size).
    """

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module,
                 input_size: int = 256) -> None:
        super().__init__(image_encoder, prompt_encoder, mask_decoder, input_size, "tiny_sam",
                         pixel_mean=UNIT_MEAN, pixel_std=UNIT_STD)

    @property
    def mask_input_size(self) -> int:
        """Side of the dense mask prompt (4 x the image-embedding grid)."""
        return 4 * int(self.prompt_encoder.image_embedding_size[0])

    def preprocess(self, x01: torch.Tensor) -> torch.Tensor:
        x = as_rgb(x01)
        h, w = x.shape[-2:]
        nh, nw = longest_side_hw(h, w, self.input_size)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, (nh, nw), mode="bilinear", align_corners=False, antialias=True)
        x = (minmax_per_image(x) - self.pixel_mean) / self.pixel_std
        return pad_bottom_right(x, self.input_size)

    def box_prompt_mask(self, boxes: torch.Tensor) -> torch.Tensor:
        """Dense mask prompt ``B x 1 x 64 x 64`` from input-frame boxes ``B x 4``."""
        return box_raster(boxes, self.input_size, self.mask_input_size)

    def decode_low_res(self, embeddings: torch.Tensor, boxes_px: torch.Tensor,
                       orig_hw: tuple[int, int]) -> torch.Tensor:
        if boxes_px.ndim != 2 or boxes_px.shape[1] != 4 or boxes_px.shape[0] != embeddings.shape[0]:
            raise DataError(f"boxes must be B x 4 with B={embeddings.shape[0]}, got {tuple(boxes_px.shape)}")
        boxes = self.input_boxes(boxes_px.to(embeddings.device), orig_hw)
        masks = self.box_prompt_mask(boxes).to(embeddings.dtype)
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=masks)
        return batched_mask_decoder(self.mask_decoder, embeddings, self.prompt_encoder.get_dense_pe(),
                                    sparse, dense)


@dataclass(frozen=True)
class TinySamConfig:
    """Sizes of the workflow's own tiny SAM (~0.3 M parameters, 256 input, 16 x 16 x 64 embedding)."""

    img_size: int = 256
    patch_size: int = 16
    embed_dim: int = 64
    depth: int = 2
    num_heads: int = 2
    prompt_dim: int = 64
    decoder_depth: int = 1
    decoder_mlp: int = 128
    decoder_heads: int = 2


@register_model(
    "tiny_sam", family="tiny_sam", input_size=256,
    normalisation="longest side 256, per-image min-max to [0,1], ImageNet mean/std, zero pad",
    checkpoint_file="pretrained.safetensors", checkpoint_source="workflow", adapters="insertable",
    insert_adapters=insert_adapters,
    description="the workflow's own ~0.3 M-param SAM; box given as sparse box prompt and as a dense mask "
    "prompt (filled rectangle at 64x64)",
)
def build_tiny_sam(cfg: TinySamConfig | None = None) -> TinySamSegmenter:
    """The tiny SAM from segment_anything building blocks (:class:`TinySamSegmenter`), random weights."""
    sam = sam_modeling()
    ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer = (
        sam.ImageEncoderViT, sam.MaskDecoder, sam.PromptEncoder, sam.TwoWayTransformer
    )
    cfg = cfg or TinySamConfig()
    grid = cfg.img_size // cfg.patch_size
    encoder = ImageEncoderViT(
        img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
        num_heads=cfg.num_heads, global_attn_indexes=tuple(range(cfg.depth)), window_size=0,
        out_chans=cfg.prompt_dim, use_rel_pos=True, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
    )
    prompt = PromptEncoder(embed_dim=cfg.prompt_dim, image_embedding_size=(grid, grid),
                           input_image_size=(cfg.img_size, cfg.img_size), mask_in_chans=16)
    decoder = MaskDecoder(
        transformer_dim=cfg.prompt_dim,
        transformer=TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=cfg.prompt_dim,
                                      mlp_dim=cfg.decoder_mlp, num_heads=cfg.decoder_heads),
        num_multimask_outputs=3, iou_head_hidden_dim=cfg.prompt_dim,
    )
    return TinySamSegmenter(encoder, prompt, decoder, input_size=cfg.img_size)
