"""Preprocessing shared by the model wrappers: stored images to [0, 1] tensors, the official pipelines'
resizes as exact linear operators, rounding with straight-through gradients, box scaling, padding.

Every operator is batched (``B x C x H x W``) and differentiable w.r.t. the pixels (see
:mod:`medfm_robust.seg.models` for the input convention).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medfm_robust.errors import DataError

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
UNIT_MEAN = tuple(v / 255.0 for v in SAM_PIXEL_MEAN)  # the same (ImageNet) statistics on [0, 1] values
UNIT_STD = tuple(v / 255.0 for v in SAM_PIXEL_STD)

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


def as_rgb(x01: torch.Tensor) -> torch.Tensor:
    """``B x 1|3 x H x W`` -> ``B x 3 x H x W`` (grayscale repeated); any other shape is a ``DataError``."""
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


def resize_axis(x: torch.Tensor, kind: str, n_out: int, dim: int) -> torch.Tensor:
    """Apply the 1-D ``kind`` resize along ``dim`` (-1: width, -2: height) of ``B x C x H x W``."""
    mat = torch.as_tensor(_resize_matrix(kind, int(x.shape[dim]), n_out), dtype=x.dtype, device=x.device)
    return torch.einsum("bchw,pw->bchp", x, mat) if dim == -1 else torch.einsum("oh,bchw->bcow", mat, x)


def separable_resize(x: torch.Tensor, out_hw: tuple[int, int], kind: str) -> torch.Tensor:
    """Batched, differentiable 2-D resize ``B x C x H x W`` -> ``B x C x out_h x out_w`` (see
    :func:`_resize_matrix` for ``kind``), without clipping or rounding."""
    return resize_axis(resize_axis(x, kind, out_hw[1], -1), kind, out_hw[0], -2)


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


def pad_bottom_right(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero padding of ``... x H x W`` at the bottom and right to ``size x size``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, size - w, 0, size - h))

