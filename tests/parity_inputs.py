"""Inputs of the numerical-parity tests (``test_seg_parity.py``), shared with the reference generator.

Everything here is deterministic and independent of CPU kernels: weights come from numpy's PCG64
``standard_normal`` (bit-reproducible across platforms) seeded per state-dict key, scaled by exact float32
elementwise operations; images are integer arithmetic. ``docs/parity.md`` describes how the reference
probability maps under ``tests/data/parity/`` were produced with the official code from these inputs.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
import torch

SEED = 11
_TOKENS = re.compile(
    r"(point_embeddings\.\d+|not_a_point_embed|no_mask_embed|iou_token|mask_tokens)\.weight$"
)


def parity_tensor(key: str, like: torch.Tensor, seed: int = SEED) -> torch.Tensor:
    """Deterministic stand-in for a trained tensor named ``key`` with ``like``'s shape and dtype.

    Non-float tensors (index buffers, ``num_batches_tracked``) keep ``like``'s value. Float tensors draw
    ``z ~ N(0, 1)`` from ``numpy.random.Generator(PCG64(s))`` (``s`` = first 8 bytes of
    ``sha256(f"{seed}:{key}")``) and become: ``1 + 0.1 |z|`` (BatchNorm ``running_var``), ``1 + 0.1 z``
    (1-D ``weight``: norm scales), ``z`` (SAM's Fourier matrix and prompt/token embeddings),
    ``0.02 z`` (other 1-D tensors, ``pos_embed``, ``rel_pos``, ``attention_biases``), else
    ``z / sqrt(prod(shape[1:]))`` (layer weights scaled by their fan-in).
    """
    if not like.is_floating_point():
        return like.detach().clone()
    s = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")
    z = np.random.Generator(np.random.PCG64(s)).standard_normal(tuple(like.shape), dtype=np.float32)
    if key.endswith("running_var"):
        v = np.float32(1.0) + np.float32(0.1) * np.abs(z)
    elif like.ndim == 1 and key.endswith("weight"):
        v = np.float32(1.0) + np.float32(0.1) * z
    elif key.endswith("positional_encoding_gaussian_matrix") or _TOKENS.search(key):
        v = z
    elif like.ndim <= 1 or "pos_embed" in key or "rel_pos" in key or "attention_biases" in key:
        v = np.float32(0.02) * z
    else:
        v = z * np.float32(1.0 / math.sqrt(math.prod(like.shape[1:])))
    return torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(like.dtype)


def parity_state_dict(model: torch.nn.Module, seed: int = SEED) -> dict[str, torch.Tensor]:
    """:func:`parity_tensor` for every entry of ``model.state_dict()`` (order-independent)."""
    return {k: parity_tensor(k, v, seed) for k, v in model.state_dict().items()}


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    """``h x w`` float64 scene in [0, 1]: a diagonal gradient, three Gaussian blobs and a bright ring."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.Generator(np.random.PCG64(seed))
    img = 0.25 * (xx / w + yy / h)
    for cy, cx, r, a in ((0.45, 0.5, 0.18, 0.6), (0.25, 0.2, 0.08, 0.35), (0.75, 0.8, 0.1, -0.2)):
        img += a * np.exp(-(((yy - cy * h) ** 2 + (xx - cx * w) ** 2) / (2 * (r * min(h, w)) ** 2)))
    ring = np.hypot(yy - 0.6 * h, xx - 0.35 * w)
    img += 0.25 * ((ring > 0.12 * min(h, w)) & (ring < 0.16 * min(h, w)))
    img += 0.03 * rng.standard_normal((h, w))
    return np.clip(img, 0.0, 1.0)


def parity_images() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Name -> (uint8 image ``H x W x 3`` or ``H x W``, inclusive pixel box ``[x0, y0, x1, y1]`` int64).

    ``rgb300x220`` (H 220, W 300), ``gray256`` and ``rgb256``; RGB channels differ (tinted copies).
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (h, w, rgb, box, seed) in {
        "rgb300x220": (220, 300, True, (93, 41, 221, 167), 1),
        "gray256": (256, 256, False, (70, 58, 190, 183), 2),
        "rgb256": (256, 256, True, (49, 80, 175, 211), 3),
    }.items():
        base = _scene(h, w, seed)
        if rgb:
            tint = np.stack([base, 0.8 * base + 0.1, np.clip(1.1 * base[:, ::-1] - 0.05, 0, 1)], axis=2)
            img = np.round(255 * tint).astype(np.uint8)
        else:
            img = np.round(255 * base).astype(np.uint8)
        out[name] = (img, np.array(box, dtype=np.int64))
    return out
