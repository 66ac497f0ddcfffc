"""Nested levels, apply(), physical bounds, reachability certificate and raw 16-bit images (issue 14)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from test_perturb import textured

from medfm_robust.errors import ConfigError
from medfm_robust.perturb import REGISTRY, applicable_types, apply, calibrate, calibrate_levels, in_band
from medfm_robust.perturb._common import Context
from medfm_robust.perturb.contact import contact_sheet
from medfm_robust.perturb.search import DEFAULT_BANDS, Curve, LevelSearch, State


def raw_mri(size: int = 96, seed: int = 0) -> np.ndarray:
    """A raw MRI-like uint16 slice with values 0..~1300 (head, textured brain, bright lesion, noise)."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    head = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.36) ** 2 < 1
    brain = ((yy - 0.5) / 0.36) ** 2 + ((xx - 0.5) / 0.30) ** 2 < 1
    tissue = 600 + 250 * ndimage.gaussian_filter(r.standard_normal((size, size)), 2.0) / 0.14
    img = np.where(brain, tissue, np.where(head, 900.0, 0.0))
    img = np.where((((yy - 0.4) / 0.08) ** 2 + ((xx - 0.6) / 0.1) ** 2) < 1, 1250.0, img)
    img = ndimage.gaussian_filter(img, 0.8) + r.normal(0, 12, img.shape) * head
    return np.clip(img, 0, 1300).round().astype(np.uint16)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_apply_returns_exactly_what_calibration_saves(name: str) -> None:
    img = textured(48, rgb=name in {"stain_variation", "blood"}, seed=3)
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[12:30, 15:35] = 1
    for r in calibrate_levels(img, name, (2, 4), seed=9, mask=mask):
        out, moved = apply(img, name, r.param, seed=9, mask=mask)
        assert out.dtype == img.dtype and out.shape == img.shape
        assert np.array_equal(out, r.image) and np.array_equal(moved, r.mask)


def test_levels_share_one_layout_and_differ_only_in_strength() -> None:
    img = textured(64, seed=1)
    res = calibrate_levels(img, "salt_pepper_noise", seed=4)
    assert [r.level for r in res] == [1, 2, 3, 4, 5] and all(r.in_band for r in res)
    hit = [r.image != img for r in res]
    for a, b in itertools.pairwise(hit):
        assert not (a & ~b).any()  # every pixel corrupted at level L is corrupted at level L + 1
    noise = [r.image.astype(float) - img for r in calibrate_levels(img, "gaussian_noise", seed=4)]
    inner = (img > 40) & (img < 215)  # away from clipping
    assert np.corrcoef(noise[0][inner], noise[4][inner])[0, 1] > 0.8  # the same noise field, scaled
    single = calibrate(img, "gaussian_noise", 3, seed=4)
    assert np.array_equal(apply(img, "gaussian_noise", single.param, seed=4)[0], single.image)


def test_calibrate_levels_is_byte_identical_on_rerun_and_certifies_reach() -> None:
    img = textured(64, rgb=True, seed=2)
    a = calibrate_levels(img, "hair", seed=5)
    b = calibrate_levels(img, "hair", seed=5)
    assert all(np.array_equal(x.image, y.image) and x.param == y.param for x, y in zip(a, b, strict=True))
    lo_end, _ = apply(img, "hair", REGISTRY["hair"].param.strong, seed=5)
    hi_end, _ = apply(img, "hair", REGISTRY["hair"].param.mild, seed=5)
    ctx = Context(img)
    assert a[0].ssim_min_reachable <= ctx.ref.score(lo_end) and a[0].ssim_max_reachable >= ctx.ref.score(
        hi_end
    )


SWEEP_TYPES = (
    "gaussian_blur",
    "jpeg_compression",
    "pixelate",
    "slide_bubbles",
    "bias_field",
    "light_reflection",
)


@pytest.mark.parametrize("name", SWEEP_TYPES)
def test_calibration_finds_a_band_whenever_a_sweep_with_apply_does(name: str) -> None:
    """The outside check of requirement 3: a 21-point sweep of the bounded range with ``apply``."""
    pspec = REGISTRY[name].param
    for img in (textured(64, seed=6), textured(64, rgb=True, seed=7, dark=True)):
        ctx = Context(img)
        swept = [ctx.ref.score(apply(ctx, name, pspec.value(t), seed=11)[0]) for t in np.linspace(0, 1, 21)]
        for r in calibrate_levels(ctx, name, seed=11):
            if any(in_band(s, r.level, DEFAULT_BANDS) for s in swept):
                assert r.in_band, (name, r.level, r.reason)
            lo, hi = r.band
            if min(swept) >= hi or max(swept) < lo:
                assert not r.in_band and r.reason.startswith("unreachable")


def test_physical_bounds_hold_at_the_strong_end() -> None:
    for name, spec in REGISTRY.items():
        assert len(spec.param.bound) > 15, name  # every bound states its reason
        assert "Bound (" in (spec.prepare.__doc__ or ""), name
    img = textured(96, seed=3)
    ctx = Context(img)
    strong = {n: apply(ctx, n, REGISTRY[n].param.strong, seed=2)[0].astype(float) for n in REGISTRY}
    x = img.astype(float)
    body = x > 60
    cy, cx = (int(v) for v in np.argwhere(body).mean(0))
    centre = np.s_[cy - 3 : cy + 4, cx - 3 : cx + 4]
    assert strong["beam_hardening"][centre].mean() >= 0.6 * x[centre].mean() - 1  # cupping <= 40 %
    gain = strong["bias_field"][x > 20] / x[x > 20]
    assert gain.min() > 0.5 - 0.05 and np.percentile(gain, 99) < 2.0 + 0.05
    assert np.abs(strong["photon_starvation"] - x).max() <= 255
    for name in ("brightness", "contrast"):
        assert strong[name].std() > 0.15 * x.std(), name  # never a flat field
    for name in ("light_reflection", "specular_reflection"):
        changed = np.mean(np.abs(strong[name] - x) > 0.2 * 255)
        assert changed < 0.45, (name, changed)


def test_raw_16bit_mri_calibrates_in_its_real_range() -> None:
    """A raw uint16 slice (0..~1300): SSIM and intensity parameters use its range, not 65535."""
    img = raw_mri()
    assert img.max() < 1400
    ctx = Context(img)
    assert ctx.maxval == float(img.max() - img.min())
    hits, reachable = [], 0
    for name in applicable_types("mri"):
        for r in calibrate_levels(ctx, name, seed=1):
            assert r.image.dtype == np.uint16 and r.image.max() <= img.max()
            if r.ssim_min_reachable < r.band[1] and r.ssim_max_reachable >= r.band[0]:
                reachable += 1
                hits.append(r.in_band)
    assert reachable >= 0.85 * 5 * len(applicable_types("mri")) and np.mean(hits) >= 0.95
    # with the dtype's range (65535) as the scale, white is not the image's white: values escape it
    r = calibrate(img, "gaussian_noise", 5, seed=1, data_range=65535)
    assert r.image.max() > 2 * img.max()


def test_stain_variation_offers_hed_and_hsv() -> None:
    img = textured(48, rgb=True, seed=5)
    hed = calibrate_levels(img, "stain_variation", (1, 3), seed=2)
    hsv = calibrate_levels(img, "stain_variation", (1, 3), seed=2, options={"space": "hsv"})
    assert hed[0].in_band and hsv[0].in_band
    assert not np.array_equal(hed[1].image, hsv[1].image)
    same = apply(img, "stain_variation", hsv[1].param, seed=2, options={"space": "hsv"})[0]
    assert np.array_equal(same, hsv[1].image)
    assert REGISTRY["stain_variation"].options == {"space": ("hed", "hsv")}
    with pytest.raises(ConfigError, match="space"):
        calibrate(img, "stain_variation", 1, seed=0, options={"space": "lab"})
    with pytest.raises(ConfigError, match="no option"):
        calibrate(img, "hair", 1, seed=0, options={"space": "hsv"})


def test_kspace_motion_segments_follow_the_cartesian_readout_order() -> None:
    """Motion episodes are contiguous in acquisition time of a linear sweep ky = -H/2 .. H/2 - 1: the
    episode index never decreases along the sweep, and +k_max / -k_max (adjacent FFT rows) are in the
    last / first episodes, not one."""
    for h in (64, 65):
        ctx = Context(textured(h, seed=9))
        for seed in range(3):
            seg = REGISTRY["kspace_motion"].prepare(ctx, np.random.default_rng(seed)).segment
            by_time = seg[(np.arange(h) - h // 2) % h]  # FFT rows in acquisition order
            assert (np.diff(by_time) >= 0).all()
            ky = np.fft.fftfreq(h) * h
            assert seg[np.argmin(ky)] == 0 and seg[np.argmax(ky)] == seg.max() > 0


def test_contact_sheet_crosses_out_unreachable_tiles() -> None:
    img = textured(48, seed=1)
    plain = contact_sheet(img, [("t", [(1, img, 0.95, True, True)])], tile=48, levels=(1,))
    crossed = contact_sheet(img, [("t", [(1, img, 0.95, False, False)])], tile=48, levels=(1,))
    red = lambda a: int(((a[..., 0] > 150) & (a[..., 1] < 60) & (a[..., 2] < 60)).sum())  # noqa: E731
    assert red(crossed) > red(plain) + 48  # the two diagonals


def _noise_curve(amplitude: float) -> Curve:
    """A shared curve of additive noise ``amplitude * sigma`` (sigma in gaussian_noise's bounded range)."""
    ctx = Context(textured(64, seed=6))
    noise = np.random.default_rng(0).standard_normal(ctx.x.shape).astype(np.float32)
    dither = np.full(ctx.x.shape, 0.5, np.float32)
    curve = Curve(
        ctx, REGISTRY["gaussian_noise"].param, lambda p: ctx.x + np.float32(amplitude * p) * noise, dither
    )
    curve.evaluate(0.0)
    curve.evaluate(1.0)
    return curve


def test_level_search_moves_through_named_states() -> None:
    curve = _noise_curve(1.0)
    search = LevelSearch(curve, 3, DEFAULT_BANDS, 14, prior=0.5)
    assert search.step() and search.state is State.BISECTING  # the two ends straddle L3's band
    search.run()
    assert search.state is State.DONE and search.reason == ""
    assert in_band(curve.memo[search.param][0], 3, DEFAULT_BANDS)
    narrow = list(DEFAULT_BANDS)
    narrow[2] = (0.75, 0.75001)
    spent = LevelSearch(curve, 3, narrow, 1, prior=0.5).run()
    assert spent.state is State.EXHAUSTED and spent.reason == "no parameter in band after 1 evaluations"
    mild = _noise_curve(0.01)  # the whole range stays above SSIM 0.9
    search = LevelSearch(mild, 3, DEFAULT_BANDS, 14, prior=0.5)
    assert search.step() and search.state is State.BRACKETING  # every point too mild: the grid
    search.run()
    assert search.state is State.UNREACHABLE and search.reason.startswith("unreachable: too mild")
    assert sorted(mild.pos.values()) == [0.0, 0.25, 0.5, 0.75, 1.0]
