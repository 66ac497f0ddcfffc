"""Embedded demo data made offline: synthetic modalities, MNI152 brain slices, Shepp-Logan phantoms,
showcase images without masks, and small helpers describing a mask for the VLM demos."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medfm_robust.data.registry import Item, Loaded, register
from medfm_robust.data.synth import GENERATORS
from medfm_robust.errors import DataError
from medfm_robust.seeding import rng_for

DEMO_SIZE = 256
MIN_MASK_PIXELS = 30

ORGAN_BY_MODALITY: dict[str, str] = {
    "dermoscopy": "skin",
    "mri": "brain",
    "ct": "liver",
    "xray": "lung",
    "ultrasound": "breast",
    "endoscopy": "colon",
    "fundus": "retina",
    "oct": "retina",
    "pathology": "tissue",
    "angiography": "coronary artery",
}
"""The organ each demo modality shows (for VQA/caption templates)."""

FINDING_BY_MODALITY: dict[str, str] = {
    "dermoscopy": "pigmented skin lesion",
    "mri": "tumour",
    "ct": "liver lesion",
    "xray": "lung nodule",
    "ultrasound": "breast lesion",
    "endoscopy": "polyp",
    "fundus": "optic disc",
    "oct": "optic disc",
    "pathology": "tumour region",
    "angiography": "stenotic vessel segment",
}
"""What the demo mask of each modality marks."""


def synthetic_sample(dataset: str, modality: str, index: int, seed: int, size: int = DEMO_SIZE) -> Loaded:
    """The ``index``-th synthetic image of a demo dataset: deterministic in (seed, dataset, modality, index).

    A draw whose target would be under ``MIN_MASK_PIXELS`` pixels is redrawn with the next attempt key.
    """
    if modality not in GENERATORS:
        raise DataError(f"no synthetic generator for modality '{modality}' (known: {', '.join(GENERATORS)})")
    for attempt in range(8):
        rng = rng_for("demo", dataset, modality, index, attempt, global_seed=seed)
        image, mask = GENERATORS[modality](rng, size)
        if mask.sum() >= MIN_MASK_PIXELS:
            return image, mask
    raise DataError(f"demo {dataset}/{modality}: no usable target after 8 attempts for image {index}")


def _count(spec: Mapping[str, Any], default: int = 48) -> int:
    n = spec.get("n_images")
    return default if n is None else int(n)


@register("demo", modality=None, needs_path=False, generated=True, layout="generated (no files)")
def demo(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """Synthetic images of ``spec['modality']`` (``n_images`` of them, 48 by default)."""
    modality = str(spec.get("modality") or "")
    if modality not in GENERATORS:
        raise DataError(f"dataset {dataset}: adapter 'demo' needs a modality among {', '.join(GENERATORS)}")

    def loader(i: int) -> Callable[[], Loaded]:
        return lambda: synthetic_sample(dataset, modality, i, seed)

    return [
        Item(f"{modality}_{i:04d}", f"demo:{modality}/seed={seed}/index={i}", loader(i))
        for i in range(_count(spec))
    ]


@lru_cache(maxsize=1)
def _mni152() -> tuple[np.ndarray, np.ndarray]:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    t1 = np.asarray(load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)
    brain = np.asarray(load_mni152_brain_mask(resolution=1).get_fdata()) > 0.5
    return t1, brain


def mni152_slices(n: int) -> list[int]:
    """``n`` axial slice indices spread evenly over slices whose brain mask covers >= 5% of the slice."""
    _, brain = _mni152()
    area = brain.mean(axis=(0, 1))
    zs = np.flatnonzero(area >= 0.05)
    if n > zs.size:
        raise DataError(f"mni152: only {zs.size} axial slices contain brain; n_images={n} is too many")
    return [int(zs[k]) for k in np.linspace(0, zs.size - 1, n).round().astype(int)]


def mni152_slice(z: int) -> Loaded:
    """Axial slice ``z`` of the MNI152 T1 template (1 mm, nilearn's bundled copy) and its brain mask.

    The volume is (x, y, z) in RAS order; the slice is shown radiologically (anterior up, patient's right
    on the image left), zero-padded left and right to a ``233 x 233`` square (so resizing keeps the aspect
    ratio), as uint8 (template intensity [0, 1] x 255) and a bool mask.
    """
    t1, brain = _mni152()
    img = np.flipud(t1[:, :, z].T)
    mask = np.flipud(brain[:, :, z].T)
    extra = img.shape[0] - img.shape[1]
    pad = ((0, 0), (extra // 2, extra - extra // 2))
    img, mask = np.pad(img, pad), np.pad(mask, pad)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), mask.copy()


@register(
    "mni152", modality="mri", needs_path=False, generated=True, layout="nilearn's bundled MNI152 template"
)
def mni152(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """Axial slices of the MNI152 T1 template with the template's brain mask (real anatomy, one subject
    average; ``n_images`` evenly spaced slices, at most the number of slices containing brain)."""

    def loader(z: int) -> Callable[[], Loaded]:
        return lambda: mni152_slice(z)

    return [
        Item(f"mni152_z{z:03d}", f"nilearn:MNI152/T1/axial/z={z}", loader(z))
        for z in mni152_slices(_count(spec))
    ]


SHEPP_TARGETS = ("ventricle_left", "ventricle_right", "top_ellipse", "brain")


@lru_cache(maxsize=1)
def _shepp_components() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """skimage's 400 x 400 Shepp-Logan phantom and masks of its main ellipses, derived from the
    piecewise-constant image itself (connected regions of one intensity, holes filled)."""
    from skimage.data import shepp_logan_phantom

    ph = shepp_logan_phantom().astype(np.float32)
    q = np.rint(ph * 10).astype(int)  # levels 0 (air, ventricles), 1-4 (tissue), 10 (skull)
    lab, n = ndi.label(q == 0)
    sizes = ndi.sum(np.ones_like(q), lab, range(1, n + 1))
    inner = [i + 1 for i in np.argsort(sizes)[::-1][1:3]]  # the largest zero region is the outside
    if len(inner) != 2:
        raise DataError("skimage's Shepp-Logan phantom has an unexpected layout (ventricles not found)")
    left, right = sorted(inner, key=lambda i: ndi.center_of_mass(lab == i)[1])
    masks: dict[str, np.ndarray] = {
        "ventricle_left": lab == left,
        "ventricle_right": lab == right,
        "brain": ndi.binary_fill_holes((q >= 1) & (q < 10)),
    }
    lab3, n3 = ndi.label(q == 3)
    top = max(range(1, n3 + 1), key=lambda i: int((lab3 == i).sum()))
    masks["top_ellipse"] = ndi.binary_fill_holes(lab3 == top)
    return ph, masks


def shepp_logan_sample(index: int, seed: int, size: int = DEMO_SIZE) -> Loaded:
    """A Shepp-Logan phantom variant: deterministic rotation (+-20 deg), scale (0.8-1.1), shift, contrast
    gamma, blur and Gaussian noise per ``index``; the target ellipse cycles through :data:`SHEPP_TARGETS`.

    Returns a ``size x size`` uint8 image and bool mask (the mask follows the same geometry, nearest).
    """
    from skimage.transform import AffineTransform, warp

    ph, masks = _shepp_components()
    rng = rng_for("shepp_logan", index, global_seed=seed)
    target = SHEPP_TARGETS[index % len(SHEPP_TARGETS)]
    n = ph.shape[0]
    scale = rng.uniform(0.8, 1.1) * n / size
    rot = np.deg2rad(rng.uniform(-20, 20))
    c = (size - 1) / 2
    shift = rng.uniform(-0.06, 0.06, 2) * size
    to_center = AffineTransform(translation=(-c - shift[0], -c - shift[1]))
    tform = (
        to_center
        + AffineTransform(scale=scale, rotation=rot)
        + AffineTransform(translation=((n - 1) / 2,) * 2)
    )
    img = warp(ph, tform, output_shape=(size, size), order=1, preserve_range=True).astype(np.float32)
    mask = warp(masks[target].astype(np.float32), tform, output_shape=(size, size), order=0) > 0.5
    img = np.clip(img, 0, 1) ** rng.uniform(0.6, 1.0)
    img = ndi.gaussian_filter(img, rng.uniform(0.3, 1.2)) + rng.normal(0, rng.uniform(0.01, 0.05), img.shape)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), mask


@register(
    "shepp_logan", modality="ct", needs_path=False, generated=True, layout="skimage's Shepp-Logan phantom"
)
def shepp_logan(dataset: str, spec: Mapping[str, Any], root: Path | None, seed: int) -> list[Item]:
    """Shepp-Logan phantom variants (``n_images``, 48 by default) with one ellipse as the target."""

    def loader(i: int) -> Callable[[], Loaded]:
        return lambda: shepp_logan_sample(i, seed)

    return [
        Item(f"shepp_{i:04d}", f"skimage:shepp_logan_phantom/index={i}", loader(i))
        for i in range(_count(spec))
    ]


def showcase_images() -> dict[str, tuple[str, np.ndarray]]:
    """Real images bundled with installed packages, without masks: ``{name: (modality, image)}``.

    - ``retina``: skimage's fundus photograph, RGB uint8 (1411 x 1411 x 3);
    - ``immunohistochemistry``: skimage's IHC pathology image, RGB uint8 (512 x 512 x 3);
    - ``ct_small``: pydicom's ``CT_small.dcm``, uint16 (128 x 128, stored values shifted to >= 0);
    - ``mr_small``: pydicom's ``MR_small.dcm``, uint16 (64 x 64, shifted to >= 0).
    """
    from pydicom import examples
    from skimage import data

    out: dict[str, tuple[str, np.ndarray]] = {
        "retina": ("fundus", np.asarray(data.retina(), dtype=np.uint8)),
        "immunohistochemistry": ("pathology", np.asarray(data.immunohistochemistry(), dtype=np.uint8)),
    }
    for name, modality, ds in (("ct_small", "ct", examples.ct), ("mr_small", "mri", examples.mr)):
        px = np.asarray(ds.pixel_array).astype(np.int64)
        px -= min(int(px.min()), 0)
        out[name] = (modality, np.clip(px, 0, 65535).astype(np.uint16))
    return out


def describe_mask(mask: np.ndarray) -> dict[str, Any]:
    """Facts about a target mask (``H x W`` bool) for VQA/caption templates.

    Returns ``side`` (``left``/``right``/``center``: image side of the mask's centroid, centre band =
    middle 10% of the width), ``vertical`` (``upper``/``lower``/``middle``), ``size_class``
    (``small`` < 2%, ``medium`` < 10%, ``large`` >= 10% of the image area), ``area_fraction`` (float),
    ``centroid`` ([y, x] float) and ``box`` ([x_min, y_min, x_max, y_max] inclusive).
    """
    m = np.asarray(mask) > 0
    if m.ndim != 2 or not m.any():
        raise DataError("describe_mask: mask must be a non-empty H x W array")
    h, w = m.shape
    ys, xs = np.nonzero(m)
    cy, cx = float(ys.mean()), float(xs.mean())
    frac = float(m.mean())

    def band(v: float, n: int, lo: str, hi: str, mid: str) -> str:
        rel = v / max(n - 1, 1)
        return lo if rel < 0.45 else hi if rel > 0.55 else mid

    return {
        "side": band(cx, w, "left", "right", "center"),
        "vertical": band(cy, h, "upper", "lower", "middle"),
        "size_class": "small" if frac < 0.02 else "medium" if frac < 0.10 else "large",
        "area_fraction": frac,
        "centroid": [cy, cx],
        "box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
    }
