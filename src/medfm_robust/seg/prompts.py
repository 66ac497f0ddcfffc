"""Box prompts: one tight box per image from its ground-truth mask, with optional seeded jitter.

Boxes are ``[x_min, y_min, x_max, y_max]`` in pixels of the stored image, inclusive max (as MedSAM derives
them from ``np.where`` of the mask). Model wrappers scale them to their input space
(:meth:`medfm_robust.seg.models.PromptableSegmenter.input_boxes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfm_robust.boxes import require_box
from medfm_robust.seeding import rng_for


@dataclass(frozen=True)
class BoxJitter:
    """Seeded box jitter: each side moves by ``U(-fraction, fraction)`` times the box width (x) or height (y).

    ``fraction = 0`` disables it. The draw depends only on (dataset, image id) and the global seed, so an
    image gets the same relative jitter in every mode (clean, each perturbation level, each attack).
    """

    fraction: float = 0.0
    seed: int = 0


def jitter_box(
    box: np.ndarray, hw: tuple[int, int], jitter: BoxJitter, dataset: str, image_id: str
) -> np.ndarray:
    """``box`` (float64) with seeded jitter applied, clamped to the image and kept ordered (min <= max)."""
    out = np.asarray(box, dtype=np.float64).copy()
    if jitter.fraction <= 0:
        return out
    rng = rng_for("seg-box-jitter", dataset, image_id, global_seed=jitter.seed)
    u = rng.uniform(-jitter.fraction, jitter.fraction, size=4)
    w = out[2] - out[0] + 1.0
    h = out[3] - out[1] + 1.0
    out += u * np.array([w, h, w, h])
    h_img, w_img = hw
    out[[0, 2]] = np.clip(out[[0, 2]], 0, w_img - 1)
    out[[1, 3]] = np.clip(out[[1, 3]], 0, h_img - 1)
    out[2] = max(out[2], out[0])
    out[3] = max(out[3], out[1])
    return out


def prompt_box(mask: np.ndarray, jitter: BoxJitter, dataset: str, image_id: str) -> np.ndarray:
    """The box prompt of one image: tight box of ``mask`` plus the configured jitter (float64, 4 values)."""
    m = np.asarray(mask)
    return jitter_box(require_box(m), (int(m.shape[0]), int(m.shape[1])), jitter, dataset, image_id)
