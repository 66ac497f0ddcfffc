"""Embedded demo data: synthetic modalities, MNI152 slices, Shepp-Logan phantoms, showcase images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfm_robust.config import load_config
from medfm_robust.data.demo import (
    ORGAN_BY_MODALITY,
    describe_mask,
    mni152_slice,
    mni152_slices,
    shepp_logan_sample,
    showcase_images,
    synthetic_sample,
)
from medfm_robust.data.registry import get_adapter
from medfm_robust.data.synth import GENERATORS
from medfm_robust.errors import DataError

MODALITIES = [
    "dermoscopy",
    "mri",
    "ct",
    "xray",
    "ultrasound",
    "endoscopy",
    "fundus",
    "pathology",
    "angiography",
]
RGB = {"dermoscopy", "endoscopy", "fundus", "pathology"}


def test_all_nine_modalities_have_a_generator() -> None:
    assert sorted(GENERATORS) == sorted(MODALITIES)
    assert set(MODALITIES) <= set(ORGAN_BY_MODALITY)


@pytest.mark.parametrize("modality", MODALITIES)
def test_synthetic_images_are_deterministic_and_well_formed(modality: str) -> None:
    image, mask = synthetic_sample(f"demo_{modality}", modality, 3, 0)
    again, mask2 = synthetic_sample(f"demo_{modality}", modality, 3, 0)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(mask, mask2)
    other, _ = synthetic_sample(f"demo_{modality}", modality, 4, 0)
    reseeded, _ = synthetic_sample(f"demo_{modality}", modality, 3, 1)
    assert not np.array_equal(image, other) and not np.array_equal(image, reseeded)
    assert image.shape[:2] == (256, 256) and mask.shape == (256, 256) and mask.dtype == bool
    assert image.ndim == (3 if modality in RGB else 2)
    assert image.dtype == (np.uint16 if modality == "ct" else np.uint8)
    assert mask.sum() >= 30


@pytest.mark.parametrize("modality", MODALITIES)
def test_synthetic_sets_are_varied_and_not_trivially_thresholdable(modality: str) -> None:
    areas, centres, best_dice = [], [], []
    for i in range(8):
        image, mask = synthetic_sample(f"demo_{modality}", modality, i, 0)
        gray = image.astype(np.float64).mean(axis=2) if image.ndim == 3 else image.astype(np.float64)
        info = describe_mask(mask)
        areas.append(info["area_fraction"])
        centres.append(info["centroid"])
        background = gray[~mask]
        assert background.std() > 0.02 * (gray.max() - gray.min() + 1), "background has texture"
        dice = 0.0
        for t in np.quantile(gray, np.linspace(0.02, 0.98, 25)):
            for pred in (gray > t, gray <= t):
                dice = max(dice, 2 * (pred & mask).sum() / (pred.sum() + mask.sum()))
        best_dice.append(dice)
    assert max(areas) > 1.5 * min(areas), "target sizes vary"
    assert np.ptp(np.array(centres), axis=0).max() > 10, "target positions vary"
    assert np.median(best_dice) < 0.85, "a single global threshold must not solve the task"


def test_demo_adapter_lists_the_configured_number() -> None:
    items = get_adapter("demo").list_items(
        "demo_ct", {"adapter": "demo", "modality": "ct", "n_images": 5}, None, 0
    )
    assert [it.image_id for it in items] == [f"ct_{i:04d}" for i in range(5)]
    with pytest.raises(DataError, match="modality"):
        get_adapter("demo").list_items("x", {"adapter": "demo", "modality": "oct"}, None, 0)


def test_default_config_has_every_demo_modality_with_48_images(repo: Path) -> None:
    cfg = load_config(repo / "config" / "config.yaml")
    demo = {s["modality"]: s for s in cfg["datasets"].values() if s["adapter"] == "demo"}
    assert sorted(demo) == sorted(MODALITIES)
    assert all(s["n_images"] >= 48 for s in demo.values())
    assert {"mni152", "shepp_logan"} <= {s["adapter"] for s in cfg["datasets"].values()}
    assert cfg["data"]["image_size"] == 256


def test_mni152_slices_are_real_brain_with_mask() -> None:
    zs = mni152_slices(48)
    assert len(set(zs)) == 48 and zs == sorted(zs)
    image, mask = mni152_slice(zs[24])
    assert image.dtype == np.uint8 and image.shape == (233, 233) and mask.shape == image.shape
    assert 0.1 < mask.mean() < 0.8
    assert image[mask].mean() > 3 * image[~mask].mean()  # brain is bright, surroundings dark
    assert mask[:10].sum() == 0 and mask[-10:].sum() == 0 and mask[:, :18].sum() == 0


def test_shepp_logan_variants_with_ellipse_masks() -> None:
    seen = set()
    for i in range(4):
        image, mask = shepp_logan_sample(i, 0)
        assert image.shape == (256, 256) and image.dtype == np.uint8 and mask.sum() > 50
        seen.add(round(float(mask.mean()), 3))
        np.testing.assert_array_equal(image, shepp_logan_sample(i, 0)[0])
    assert len(seen) == 4
    image, mask = shepp_logan_sample(0, 0)  # a ventricle: darker than its surroundings
    ring = np.logical_xor(mask, np.pad(mask, 3)[6:, 3:-3] | mask)
    assert image[mask].mean() < image[ring].mean()


def test_showcase_images_cover_the_bundled_sources() -> None:
    show = showcase_images()
    assert set(show) == {"retina", "immunohistochemistry", "ct_small", "mr_small"}
    assert show["retina"][0] == "fundus" and show["retina"][1].shape[2] == 3
    assert show["immunohistochemistry"][0] == "pathology"
    assert show["ct_small"][1].dtype == np.uint16 and show["ct_small"][1].shape == (128, 128)
    assert show["mr_small"][1].shape == (64, 64) and show["mr_small"][0] == "mri"


def test_describe_mask() -> None:
    m = np.zeros((100, 100), bool)
    m[45:55, 5:20] = True
    info = describe_mask(m)
    assert info["side"] == "left" and info["size_class"] == "small" and info["vertical"] == "middle"
    assert info["box"] == [5, 45, 19, 54] and info["area_fraction"] == pytest.approx(0.015)
    m2 = np.zeros((100, 100), bool)
    m2[60:95, 55:99] = True
    assert describe_mask(m2)["side"] == "right" and describe_mask(m2)["size_class"] == "large"
    with pytest.raises(DataError):
        describe_mask(np.zeros((5, 5), bool))
