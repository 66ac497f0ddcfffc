"""Shared building blocks: atomic writes, PNG round trips, seeds, config validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfm_robust import io, seeding
from medfm_robust.config import load_config, validate_config
from medfm_robust.errors import ConfigError, DataError


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 13,
        (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3),
        (np.arange(20 * 30) % 256).astype(np.uint8).reshape(20, 30),
    ],
)
def test_png_round_trip_is_lossless(arr: np.ndarray) -> None:
    out = io.decode_png(io.encode_png(arr))
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_png_encoder_is_lossless_on_noise_masks_and_odd_shapes() -> None:
    rng = np.random.default_rng(3)
    cases = [
        rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),  # incompressible colour
        rng.integers(0, 65536, (17, 9), dtype=np.uint16),  # every byte of 16-bit values exercised
        rng.integers(0, 256, (1, 5), dtype=np.uint8),  # a single row (no "Up" predecessor)
        rng.integers(0, 256, (6, 1), dtype=np.uint8),
    ]
    for arr in cases:
        np.testing.assert_array_equal(io.decode_png(io.encode_png(arr)), arr)
    mask = np.zeros((256, 256), bool)
    mask[40:200, 60:180] = True
    data = io.encode_png(mask)
    assert len(data) < 2000  # runs compress: a 64 KiB mask takes under 2 KB
    np.testing.assert_array_equal(io.decode_png(data), mask.astype(np.uint8))
    single = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    np.testing.assert_array_equal(io.decode_png(io.encode_png(single)), single[:, :, 0])
    for bad in (np.zeros((4, 4), np.float32), np.zeros((4, 4, 3), np.uint16), np.zeros((4, 4, 5), np.uint8)):
        with pytest.raises(DataError):
            io.encode_png(bad)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_read_image_names_the_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png"):
        io.read_image(bad)


def test_seeds_depend_on_identity_only() -> None:
    a = seeding.seed_for("ds", "img1", "gaussian_noise", 3, global_seed=0)
    assert a == seeding.seed_for("ds", "img1", "gaussian_noise", 3, global_seed=0)
    assert a != seeding.seed_for("ds", "img1", "gaussian_noise", 4, global_seed=0)
    assert a != seeding.seed_for("ds", "img1", "gaussian_noise", 3, global_seed=1)
    assert 0 <= seeding.unit_hash("ds", "img1") < 1


def test_default_config_validates_with_defaults(repo: Path) -> None:
    cfg = load_config(repo / "config" / "config.yaml")
    assert cfg["data"]["on_error"] == "fail"


def test_unknown_and_mistyped_keys_are_named(repo: Path) -> None:
    cfg = load_config(repo / "config" / "config.yaml")
    cfg["data"]["imagesize"] = 3
    cfg["seed"] = "zero"
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    text = str(info.value)
    assert "data.imagesize" in text and "unknown key" in text
    assert "'seed'" in text


def test_atomic_write_gives_normal_permissions(tmp_path: Path) -> None:
    import os

    target = tmp_path / "x.txt"
    io.write_text_atomic(target, "hello")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert target.read_text() == "hello"
