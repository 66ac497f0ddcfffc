"""Box-prompted segmentation models behind one interface, with each model's own preprocessing in torch.

One module per model family (``medsam``, ``sam_med2d`` with its adapter, ``sam``, ``lite_medsam``,
``tiny_sam``), shared preprocessing in :mod:`~medfm_robust.seg.models.preprocess`, the common interface in
:mod:`~medfm_robust.seg.models.base`, weight loading in :mod:`~medfm_robust.seg.models.loading`. Each family
module registers its models with :func:`~medfm_robust.seg.models.registry.register_model`; importing this
package imports every family module (in the order below, which is the registry's order).

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

# Importing the family modules registers their models, in this order (the registry's).
# isort: off
from medfm_robust.seg.models import (  # noqa: F401
    medsam,
    sam_med2d,
    sam,
    lite_medsam,
    tiny_sam,
)

# isort: on
from medfm_robust.seg.models.base import PromptableSegmenter, batched_mask_decoder, sam_modules
from medfm_robust.seg.models.lite_medsam import (
    LiteMedSAMSegmenter,
    build_lite_medsam,
    bundled_lite_medsam_path,
)
from medfm_robust.seg.models.loading import (
    BUNDLED,
    build_model,
    load_state_strict,
    resolve_checkpoint,
    state_hash,
)
from medfm_robust.seg.models.medsam import MedSAMSegmenter, build_medsam
from medfm_robust.seg.models.preprocess import (
    RESIZE_KINDS,
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    UNIT_MEAN,
    UNIT_STD,
    as_rgb,
    as_uint8_levels,
    images_to_batch,
    longest_side_hw,
    minmax_per_image,
    pad_bottom_right,
    round_half_up,
    scale_boxes,
    separable_resize,
    skimage_cubic_resize,
    straight_through,
    to_unit_range,
)
from medfm_robust.seg.models.registry import (
    MODEL_SPECS,
    ModelSpec,
    adapter_models,
    get_model_spec,
    register_model,
)
from medfm_robust.seg.models.sam import SamLongestSide, build_sam_vit_b
from medfm_robust.seg.models.sam_med2d import (
    SamMed2DAdapter,
    SamMed2DSegmenter,
    add_adapters,
    build_sam_med2d,
    insert_adapters,
)
from medfm_robust.seg.models.tiny_sam import TinySamConfig, TinySamSegmenter, box_raster, build_tiny_sam

__all__ = [
    "BUNDLED", "MODEL_SPECS", "RESIZE_KINDS", "SAM_PIXEL_MEAN", "SAM_PIXEL_STD", "UNIT_MEAN",
    "UNIT_STD", "LiteMedSAMSegmenter", "MedSAMSegmenter", "ModelSpec", "PromptableSegmenter",
    "SamLongestSide", "SamMed2DAdapter", "SamMed2DSegmenter", "TinySamConfig", "TinySamSegmenter",
    "adapter_models", "add_adapters", "as_rgb", "as_uint8_levels", "batched_mask_decoder", "box_raster",
    "build_lite_medsam", "build_medsam", "build_model", "build_sam_med2d", "build_sam_vit_b",
    "build_tiny_sam", "bundled_lite_medsam_path", "get_model_spec", "images_to_batch", "insert_adapters",
    "load_state_strict", "longest_side_hw", "minmax_per_image", "pad_bottom_right", "register_model",
    "resolve_checkpoint", "round_half_up", "sam_modules", "scale_boxes", "separable_resize",
    "skimage_cubic_resize", "state_hash", "straight_through", "to_unit_range",
]
