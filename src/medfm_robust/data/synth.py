"""Synthetic demo images for the nine imaging modalities, each with a target mask.

Every generator takes a ``numpy.random.Generator`` and a size and returns ``(image, mask)``: the image
is ``size x size`` (grayscale, ``uint8``; CT as ``uint16`` (HU + 1024) * 16, 12 bits left-aligned) or
``size x size x 3`` ``uint8`` RGB, the mask ``size x size`` bool. Images carry modality-like texture,
noise and distractor structures, and targets vary in size, contrast, position and boundary shape, so
box-prompted segmentation is not trivial.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medfm_robust.data.synth_optical import dermoscopy, endoscopy, fundus, pathology
from medfm_robust.data.synth_radiology import angiography, ct, mri, ultrasound, xray

Generator = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


GENERATORS: dict[str, Generator] = {
    "dermoscopy": dermoscopy,
    "mri": mri,
    "ct": ct,
    "xray": xray,
    "ultrasound": ultrasound,
    "endoscopy": endoscopy,
    "fundus": fundus,
    "pathology": pathology,
    "angiography": angiography,
}
