"""SAM-Med2D: SAM ViT-B at 256 with a parallel adapter in each encoder block (``SammedPredictor``)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from medfm_robust.seg.models.base import PromptableSegmenter, sam_modeling, sam_modules
from medfm_robust.seg.models.preprocess import SAM_PIXEL_MEAN, SAM_PIXEL_STD, as_rgb, scale_boxes
from medfm_robust.seg.models.registry import register_model


class SamMed2DSegmenter(PromptableSegmenter):
    """SAM-Med2D (``SammedPredictor`` fed as ``test.py`` feeds it): SAM ViT-B with parallel adapters at 256.

    Channels reversed to BGR (the official training and test code read images with ``cv2.imread`` and
    normalise them unchanged), ``(x * 255 - mean) / std`` with SAM's statistics in their stored order
    (0-255 units), then nearest resize to ``256 x 256`` (``cv2.INTER_NEAREST`` = torch ``nearest``; aspect
    ratio NOT kept). Box: our inclusive max becomes ``regionprops``' exclusive max (+1), then scaled per
    axis by 256 / W and 256 / H. Mask: of the three multimask outputs, the one with the highest predicted
    IoU. Logits: bilinear to 256 x 256, then bilinear to the original size.
    """

    name = "sam_med2d"
    input_size = 256

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__(image_encoder, prompt_encoder, mask_decoder)
        self.register_buffer("pixel_mean", torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, x01: torch.Tensor) -> torch.Tensor:
        x = (as_rgb(x01).flip(1) * 255.0 - self.pixel_mean) / self.pixel_std
        s = self.input_size
        if tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x, (s, s), mode="nearest")
        return x

    def input_boxes(self, boxes_px: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        exclusive = boxes_px.to(torch.float32) + torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes_px.device)
        return scale_boxes(exclusive, orig_hw, (self.input_size, self.input_size))

    def decode_low_res(self, embeddings: torch.Tensor, boxes_px: torch.Tensor,
                       orig_hw: tuple[int, int]) -> torch.Tensor:
        return self._decode_low_res(embeddings, boxes_px, orig_hw, best_of_multimask=True)

    def postprocess(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        s = self.input_size
        x = F.interpolate(low_res, (s, s), mode="bilinear", align_corners=False)
        return F.interpolate(x, orig_hw, mode="bilinear", align_corners=False)


class SamMed2DAdapter(nn.Module):
    """SAM-Med2D's parallel adapter on a ``B x H x W x C`` token map (shape kept).

    Channel gate (global average pool -> Linear C->C/4 -> ReLU -> Linear C/4->C -> Sigmoid, no biases)
    scales the map; a spatial branch (3x3 stride-2 conv -> ReLU -> 4x4 stride-2 transposed conv -> ReLU,
    no biases) maps the gated map; its output is added to the UNGATED input (``norm(x + spatial(gate * x))``,
    upstream ``Adapter_Layer.forward`` with ``skip_connect=True``), then LayerNorm. Module names match the
    official checkpoint
    (``channel.0``, ``channel.2``, ``spatial.0``, ``spatial.2``, ``norm``).
    """

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.channel = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                     nn.Linear(hidden, dim, bias=False), nn.Sigmoid())
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, bias=False), nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=4, stride=2, padding=1, bias=False), nn.ReLU(),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d) and m.weight.device.type != "meta":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.permute(0, 3, 1, 2)
        gate = self.channel(y.mean(dim=(2, 3)))[:, :, None, None]
        out = y + self.spatial(gate * y)
        return self.norm(out.permute(0, 2, 3, 1))


def _adapter_block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SAM ViT block with SAM-Med2D's adapter beside the MLP: ``x + MLP(LN2 x) + Adapter(LN2 x)``."""
    image_encoder = sam_modeling().image_encoder
    window_partition, window_unpartition = image_encoder.window_partition, image_encoder.window_unpartition

    shortcut = x
    x = block.norm1(x)
    if block.window_size > 0:
        h, w = x.shape[1], x.shape[2]
        x, pad_hw = window_partition(x, block.window_size)
    x = block.attn(x)
    if block.window_size > 0:
        x = window_unpartition(x, block.window_size, pad_hw, (h, w))
    x = shortcut + x
    x_norm = block.norm2(x)
    return x + block.mlp(x_norm) + block.Adapter(x_norm)


class _AdapterBlockMixin:
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _adapter_block_forward(self, x)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1)
def _adapter_block_class() -> type:
    return type("SamMed2DBlock", (_AdapterBlockMixin, sam_modeling().image_encoder.Block), {})


def add_adapters(encoder: nn.Module) -> None:
    """Give every block of a SAM ViT ``encoder`` a SAM-Med2D adapter beside its MLP (in place)."""
    cls = _adapter_block_class()
    for blk in encoder.blocks:
        dim = blk.norm1.normalized_shape[0]
        blk.Adapter = SamMed2DAdapter(dim)
        blk.__class__ = cls


def insert_adapters(model: nn.Module) -> None:
    """Insert SAM-Med2D adapters into a built SAM ViT model that has none (in place, on its device).

    Each new adapter's final LayerNorm has zero weight and bias, so the model's output is unchanged until
    the adapters are trained; their other weights draw from the global torch RNG (seed it first).
    """
    device = next(model.parameters()).device
    add_adapters(model.image_encoder)
    for block in model.image_encoder.blocks:
        block.Adapter.to(device)
        nn.init.zeros_(block.Adapter.norm.weight)
        nn.init.zeros_(block.Adapter.norm.bias)


@register_model(
    "sam_med2d", family="sam_vit_b", input_size=256,
    normalisation="ImageNet mean/std on 0-255, nearest resize to 256x256", checkpoint_file="sam-med2d_b.pth",
    adapters="native", description="SAM-Med2D (SAM ViT-B at 256 with adapters)",
)
def build_sam_med2d() -> SamMed2DSegmenter:
    """SAM-Med2D architecture (SAM ViT-B at 256 with an adapter in each of the 12 blocks), random weights."""
    encoder, prompt, decoder = sam_modules(768, 12, 12, (2, 5, 8, 11), 256)
    add_adapters(encoder)
    return SamMed2DSegmenter(encoder, prompt, decoder)
