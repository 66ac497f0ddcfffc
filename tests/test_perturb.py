"""Perturbation engine: registry, SSIM definition, calibration, determinism, label alignment."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from medfm_robust.errors import ConfigError, DataError
from medfm_robust.perturb import REGISTRY, applicable_types, calibrate, calibrate_levels, ssim
from medfm_robust.perturb._common import Context
from medfm_robust.perturb.registry import FAMILIES, MODALITIES
from medfm_robust.perturb.search import DEFAULT_BANDS, in_band

BASE = {
    "gaussian_noise",
    "salt_pepper_noise",
    "speckle_noise",
    "gaussian_blur",
    "motion_blur",
    "brightness",
    "contrast",
    "jpeg_compression",
    "pixelate",
    "rotation",
    "scale",
    "translation",
}
MEDICAL = {
    "dermoscopy": {"hair", "vignette", "light_reflection"},
    "mri": {"bias_field", "ghosting", "kspace_motion"},
    "ultrasound": {"acoustic_shadowing", "reverberation"},
    "endoscopy": {"specular_reflection", "bubbles", "blood", "overexposure"},
    "fundus_oct": {"shadow", "blink", "oct_motion", "defocus", "oct_speckle"},
    "pathology": {"stain_variation", "slide_bubbles"},
    "ct": {"metal_streaks", "beam_hardening", "photon_starvation", "window_level"},
    "xray": {"scatter", "underexposure", "overexposure_xray", "grid_lines"},
    "angiography": {"haze"},
}
LABEL_MOVING = {"rotation", "scale", "translation", "oct_motion"}


def textured(
    size: int = 64, rgb: bool = False, seed: int = 0, dark: bool = False, dtype: type = np.uint8
) -> np.ndarray:
    """A smooth-plus-texture test image (optionally a dark background outside a disc)."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.45 + 0.2 * np.sin(6 * xx + 2 * yy + seed) * np.cos(4 * yy)
    img = img + ndimage.gaussian_filter(r.standard_normal((size, size)), 1.2) * 0.25
    img = img + 0.25 * (((xx - 0.5) ** 2 + (yy - 0.55) ** 2) < 0.05)
    if dark:
        img = img * (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.16)
    if rgb:
        img = np.stack([img, img * 0.8 + 0.1, img * 0.6 + 0.2], -1)
    mx = np.iinfo(dtype).max
    return (np.clip(img, 0, 1) * mx).round().astype(dtype)


# ------------------------------------------------------------------ registry


def test_registry_has_exactly_the_40_effects() -> None:
    assert len(REGISTRY) == 40
    assert {n for n, s in REGISTRY.items() if s.category == "base"} == BASE
    for family, names in MEDICAL.items():
        assert {n for n, s in REGISTRY.items() if s.family == family} == names
        assert all(REGISTRY[n].category == "medical" for n in names)
    assert {n for n, s in REGISTRY.items() if s.moves_labels} == LABEL_MOVING
    for spec in REGISTRY.values():
        meta = spec.to_dict()
        lo, hi = meta["param"]["range"]
        assert lo < hi and meta["param"]["direction"] in ("increasing", "decreasing")
        assert meta["param"]["name"] and meta["description"]
        assert set(spec.modalities) <= set(MODALITIES)
    assert REGISTRY["jpeg_compression"].param.direction == "decreasing"
    assert REGISTRY["scale"].param.direction == "decreasing"


def test_param_spec_mapping_round_trips_and_rounds_integers() -> None:
    from medfm_robust.perturb.registry import ParamSpec

    for spec in REGISTRY.values():
        p = spec.param
        assert p.value(0.0) == pytest.approx(p.mild) and p.value(1.0) == pytest.approx(p.strong)
        assert p.position(p.value(0.37)) == pytest.approx(0.37, abs=1e-9)
    q = ParamSpec("n", 1, 20, integer=True)
    assert all(float(q.value(t)).is_integer() for t in np.linspace(0, 1, 13))
    narrow = REGISTRY["rotation"].param.with_range(2, 10)
    assert narrow.range == (2, 10) and narrow.direction == "increasing"


def test_continuous_jpeg_quality_matches_libjpeg_at_integers() -> None:
    import io

    from PIL import Image

    from medfm_robust.perturb.base import jpeg_round_trip

    img = textured(64, rgb=True)
    for q in (90, 37, 5):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=q, subsampling=0 if q > 50 else 2)
        ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        ours = np.rint(jpeg_round_trip(img.astype(np.float32) / 255, q) * 255).astype(np.uint8)
        assert np.array_equal(ours, ref)


@pytest.mark.parametrize("modality", MODALITIES)
def test_applicable_types_are_base_plus_family(modality: str) -> None:
    family = next(f for f, mods in FAMILIES.items() if modality in mods)
    assert set(applicable_types(modality)) == BASE | MEDICAL[family]


def test_applicable_types_filters_and_rejects_unknown_names() -> None:
    assert applicable_types("oct") == applicable_types("fundus")
    assert applicable_types("ct", include=["rotation", "hair"]) == ["rotation"]
    assert "rotation" not in applicable_types("ct", exclude=["rotation"])
    with pytest.raises(ConfigError, match="rotaton"):
        applicable_types("ct", exclude=["rotaton"])
    with pytest.raises(ConfigError, match="modality"):
        applicable_types("photo")


def test_schema_enum_matches_registry(repo) -> None:  # type: ignore[no-untyped-def]
    import yaml

    schema = yaml.safe_load((repo / "config" / "schema.yaml").read_text())
    assert schema["properties"]["perturb"]["$defs"]["name"]["enum"] == list(REGISTRY)


# ------------------------------------------------------------------ SSIM


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((64, 80), np.uint8), ((48, 50, 3), np.uint8), ((40, 57), np.uint16), ((11, 11), np.uint8)],
)
def test_ssim_agrees_with_skimage(shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(1)
    mx = np.iinfo(dtype).max
    a = ndimage.gaussian_filter(rng.random(shape), 1.0 if len(shape) == 2 else (1, 1, 0)) * mx
    a = a.astype(dtype)
    for noise in (0.01, 0.1, 0.4):
        b = np.clip(a + rng.normal(0, noise * mx, shape), 0, mx).astype(dtype)
        ref = structural_similarity(
            a,
            b,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=mx,
            channel_axis=-1 if len(shape) == 3 else None,
        )
        assert abs(ssim(a, b, data_range=mx) - ref) < 1e-4
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)


def test_ssim_uses_the_dtype_range_not_the_image_range() -> None:
    a = textured(64)
    darker = (a // 2).astype(np.uint8)
    assert ssim(a, darker) < 0.9  # a gain change is visible (min-max normalisation would hide it)


def test_uint16_ssim_uses_the_reference_images_real_range() -> None:
    """A raw 16-bit slice (values 0..1300): SSIM's data range is the reference's max - min (as skimage with
    that data_range), not the dtype's 65535, which would put any perturbation at SSIM ~1."""
    a = (textured(64).astype(np.float64) * 1300 / 255).round().astype(np.uint16)
    b = np.clip(a + np.random.default_rng(0).normal(0, 80, a.shape), 0, 1300).astype(np.uint16)
    rng_ = float(a.max() - a.min())
    ref = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=rng_
    )
    assert abs(ssim(a, b) - ref) < 1e-4 and ref < 0.8
    assert ssim(a, b, data_range=65535) > 0.99  # what the dtype range would have claimed


def test_ssim_rejects_mismatched_inputs() -> None:
    with pytest.raises(DataError):
        ssim(np.zeros((20, 20), np.uint8), np.zeros((20, 21), np.uint8))
    with pytest.raises(DataError):
        ssim(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))


# ------------------------------------------------------------------ every type, its parameter and levels


def test_fft_blurs_run_on_the_smallest_grid_that_covers_the_kernel() -> None:
    """A blur equals a direct mirror-padded convolution on whichever grid its radius selects."""
    from medfm_robust.perturb._common import fft_filter, fft_grid, gaussian_transfer, kernel_transfer
    from medfm_robust.perturb.base import line_kernel

    ctx = Context(textured(128, rgb=True, seed=4))
    assert fft_grid(ctx, 3)[0] == 16 and fft_grid(ctx, 20)[0] == 32 and fft_grid(ctx, 60)[0] == 42  # 128 // 3
    for sigma in (2.5, 6.0, 9.0):  # grids with pads 16, 32 and 42 (4 sigma)
        got = fft_filter(ctx, gaussian_transfer(ctx, sigma))
        want = np.stack(
            [ndimage.gaussian_filter(ctx.x[..., c], sigma, mode="mirror", truncate=6.0) for c in range(3)], -1
        )
        assert np.abs(got - want).max() < 2e-4, sigma
    kernel = line_kernel(30.0, 0.7, 42)  # radius 16: the 16-px grid; 40 px: radius 21, the 32-px grid
    for k in (kernel, line_kernel(40.0, 0.7, 42)):
        got = fft_filter(ctx, kernel_transfer(ctx, k))
        want = np.stack([ndimage.convolve(ctx.x[..., c], k, mode="mirror") for c in range(3)], -1)
        assert np.abs(got - want).max() < 1e-5
    with pytest.raises(ValueError, match="none of the image's FFT grids"):
        fft_filter(ctx, np.ones((10, 6), np.complex64))


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_type_changes_with_its_parameter(name: str) -> None:
    spec = REGISTRY[name]
    for img in (textured(64, rgb=False, seed=2), textured(64, rgb=True, seed=3)):
        ctx = Context(img)
        scores = []
        for t in (0.15, 0.5, 0.85):
            op = spec.prepare(ctx, np.random.default_rng(7))
            out = ctx.quantise(op(spec.param.value(t)))
            assert out.shape == img.shape and out.dtype == img.dtype
            scores.append(ctx.ref.score(out))
        assert scores[0] > scores[1] > scores[2], (name, img.ndim, scores)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_levels_are_ordered_and_in_band(name: str) -> None:
    images = [
        textured(72, rgb=False, seed=4),
        textured(72, rgb=True, seed=5),
        textured(72, seed=6, dark=True),
    ]
    per_image = [calibrate_levels(img, name, seed=i) for i, img in enumerate(images)]
    means, hits = [], []
    for level in range(1, 6):
        res = [r[level - 1] for r in per_image]
        means.append(np.mean([r.ssim for r in res]))
        for r in res:
            assert r.in_band == in_band(r.ssim, level, DEFAULT_BANDS)
            assert r.in_band or r.reason
            lo, hi = DEFAULT_BANDS[level - 1]
            if r.ssim_min_reachable < hi and r.ssim_max_reachable >= lo:  # reachable on this image
                hits.append(r.in_band)
            else:
                assert r.reason.startswith("unreachable"), (name, level, r.reason)
    assert all(a >= b for a, b in itertools.pairwise(means)), (name, means)  # nested: never milder
    assert not hits or np.mean(hits) >= 0.85, (name, hits)


def test_calibration_lands_in_band_on_varied_images() -> None:
    rng = np.random.default_rng(0)
    images = [
        textured(80, rgb=True, seed=11),
        textured(64, seed=12, dark=True),
        textured(64, seed=13, dtype=np.uint16),
        textured(96, rgb=True, seed=14, dark=True),
    ]
    names = list(REGISTRY)
    hits = []
    for i, img in enumerate(images):
        ctx = Context(img)
        for name in rng.choice(names, size=12, replace=False):
            level = int(rng.integers(1, 6))
            r = calibrate(ctx, str(name), level, seed=i)
            assert r.image.shape == img.shape and r.image.dtype == img.dtype
            assert abs(ssim(img, r.image) - r.ssim) < 1e-9  # verified on the saved image
            if not r.reason.startswith("unreachable"):  # a band the bounded range reaches on this image
                hits.append(r.in_band)
    assert len(hits) >= 40 and np.mean(hits) >= 0.95


def test_unreachable_band_is_flagged_with_the_closest_output() -> None:
    img = np.full((48, 48), 128, np.uint8)
    img[20:28, 20:28] = 140  # almost flat: blur cannot reach level 5
    r = calibrate(img, "gaussian_blur", 5, seed=0)
    assert not r.in_band and "unreachable: too mild" in r.reason
    assert r.ssim > 0.6 and r.ssim == r.ssim_min_reachable  # the closest output, and the certificate
    assert r.ssim_min_reachable > DEFAULT_BANDS[4][1]


def test_calibration_is_a_pure_function_of_its_inputs() -> None:
    img = textured(64, rgb=True)
    a = calibrate(img, "hair", 3, seed=5)
    b = calibrate(img, "hair", 3, seed=5)
    c = calibrate(img, "hair", 3, seed=6)
    assert np.array_equal(a.image, b.image) and a.param == b.param
    assert not np.array_equal(a.image, c.image)


def test_bad_arguments_are_named() -> None:
    img = textured(32)
    with pytest.raises(ConfigError, match="unknown perturbation"):
        calibrate(img, "fog", 1, seed=0)
    with pytest.raises(ConfigError, match="level"):
        calibrate(img, "gaussian_noise", 6, seed=0)
    with pytest.raises(DataError, match="mask"):
        calibrate(img, "rotation", 1, seed=0, mask=np.zeros((31, 32), np.uint8))
    with pytest.raises(DataError, match="dtype"):
        calibrate(img.astype(np.float32), "rotation", 1, seed=0)
    with pytest.raises(ConfigError, match="param_range"):
        calibrate(img, "rotation", 1, seed=0, param_range=[5, 1])


def test_param_range_override_is_respected() -> None:
    img = textured(64)
    r = calibrate(img, "gaussian_noise", 5, seed=0, param_range=[0.001, 0.01])
    assert 0.001 <= r.param <= 0.01 and not r.in_band


# ------------------------------------------------------------------ labels move with the image


def shape_image(size: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """A bright off-centre ellipse on a textured dark background, and its mask."""
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (((yy - 30) / 12.0) ** 2 + ((xx - 46) / 18.0) ** 2 <= 1).astype(np.uint8) * 255
    bg = textured(size, seed=9) // 3
    img = np.where(mask > 0, 230, bg).astype(np.uint8)
    return img, mask


@pytest.mark.parametrize("name", sorted(LABEL_MOVING))
def test_label_moving_types_move_the_mask_and_box(name: str) -> None:
    from medfm_robust.boxes import box_from_mask

    img, mask = shape_image()
    for level in (2, 5):
        r = calibrate(img, name, level, seed=level, mask=mask)
        moved = r.mask > 0
        bright = r.image > 150
        iou = (moved & bright).sum() / max((moved | bright).sum(), 1)
        assert iou > 0.8, (name, level, iou)
        if level == 5 and name != "oct_motion":
            assert not np.array_equal(r.mask, mask)
        assert set(np.unique(r.mask)) <= {0, 255}
        assert box_from_mask(r.mask) is not None


def test_intensity_types_keep_the_mask() -> None:
    img, mask = shape_image()
    r = calibrate(img, "gaussian_noise", 3, seed=0, mask=mask)
    assert np.array_equal(r.mask, mask)


@pytest.mark.parametrize("name", sorted(LABEL_MOVING))
def test_geometric_fill_is_constant_not_mirrored(name: str) -> None:
    img = textured(64, rgb=True, seed=8)
    ctx = Context(img)
    op = REGISTRY[name].prepare(ctx, np.random.default_rng(1))
    p = REGISTRY[name].param.value(1.0 if name == "oct_motion" else 0.9)  # (180 degrees leaves no corner)
    out = ctx.quantise(op(p))
    inside = op.move_mask(p, np.full(img.shape[:2], 255, np.uint8)) > 0
    outside = ndimage.binary_erosion(~inside, iterations=2)  # away from the bilinear seam
    assert outside.sum() > 5
    fill = ctx.quantise(np.broadcast_to(ctx.bg, ctx.x.shape))[0, 0]
    assert np.all(out[outside] == fill)  # one constant colour, no mirrored anatomy


def test_dithered_quantisation_keeps_unchanged_pixels_and_is_smooth() -> None:
    img = textured(64, seed=3, dark=True)
    ctx = Context(img)
    u = np.random.default_rng(0).random(ctx.x.shape, dtype=np.float32)
    assert np.array_equal(ctx.quantise(ctx.x, u), img)  # identity stays byte-identical
    # a quarter-level offset moves about a quarter of the pixels up by one level (not none, not all)
    moved = ctx.quantise(ctx.x + np.float32(0.25 / 255), u).astype(int) - img
    assert set(np.unique(moved)) <= {0, 1} and 0.15 < moved.mean() < 0.35
