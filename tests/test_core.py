"""Shared building blocks: atomic writes, PNG round trips, seeds, config validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfm_robust import io, seeding
from medfm_robust.config import load_config, load_yaml, missing_credentials, validate_config
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


def test_duplicated_yaml_keys_name_file_and_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("seed: 0\ndatasets:\n  a: {adapter: demo, modality: ct}\n  b: {adapter: demo}\n"
                    "  a: {adapter: demo, modality: mri}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:5:3: .*duplicate key 'a' \(first defined at line 3\)"):
        load_yaml(path)
    path.write_text("l:\n  - {x: 1, x: 2}\n")  # inside a list too
    with pytest.raises(ConfigError, match=r"c\.yaml:2:.*duplicate key 'x'"):
        load_yaml(path)
    path.write_text("base: &b {x: 1, y: 2}\nder:\n  <<: *b\n  x: 3\n")  # overriding a merged key is fine
    assert load_yaml(path)["der"] == {"x": 3, "y": 2}


@pytest.mark.parametrize(
    ("text", "where"),
    [("seed: 0\ndata:\n  splits: [1, 2\nfoo: 1\n", ":4:"), ("a:\n\tb: 1\n", ":2:1:"), ("a: 'open\n", ":2:")],
)
def test_yaml_syntax_errors_name_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}{where}") and "invalid YAML" in msg and "\n" not in msg


def _edited(repo: Path, edit) -> dict:
    cfg = load_yaml(repo / "config" / "config.yaml")
    edit(cfg)
    return cfg


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c["perturb"].__setitem__("bands", [[0.98, 0.90], [0.8, 0.9], [0.7, 0.8], [0.6, 0.7],
                                                       [0.5, 0.6]]),
         r"perturb\.bands\[0\]': inverted SSIM band"),
        (lambda c: c["perturb"].__setitem__("bands", [[0.5, 0.6], [0.6, 0.7], [0.7, 0.8], [0.8, 0.9],
                                                       [0.9, 0.98]]),
         r"perturb\.bands\[1\]': band \[0\.6, 0\.7\] of level 2 lies above"),
        (lambda c: c["perturb"].setdefault("overrides", {}).__setitem__(
            "gaussian_noise", {"bands": [[0.9, 0.98], [0.8, 0.9], [0.8, 0.7], [0.6, 0.7], [0.5, 0.6]]}),
         r"perturb\.overrides\.gaussian_noise\.bands\[2\]': inverted"),
        (lambda c: c["vlm"]["models"].__setitem__("my_api", {"kind": "api"}),
         r"vlm\.models\.my_api': API model without an endpoint \(missing base_url, model, api_key_env\)"),
        (lambda c: c["vlm"]["models"].__setitem__("my_api", {"kind": "api", "base_url": "http://x/v1"}),
         r"vlm\.models\.my_api': API model without an endpoint \(missing model, api_key_env\)"),
        (lambda c: c["vlm"].__setitem__("judge", {"enabled": True, "endpoint": "gpt4"}),
         r"vlm\.judge\.endpoint': unknown endpoint 'gpt4' \(known: gemini_2_5_flash, gpt_4o_mini\)"),
        (lambda c: c["vlm"].__setitem__("judge", {"endpoint": "gpt4"}), r"unknown endpoint 'gpt4'"),
        (lambda c: c["vlm"]["datasets"]["demo"].__setitem__("sources", ["demo_ct", "demo_oct"]),
         r"vlm\.datasets\.demo\.sources': unknown dataset\(s\) \['demo_oct'\]"),
        (lambda c: c["vlm"]["datasets"]["demo"].__setitem__("organs", {"nope": "lung"}),
         r"vlm\.datasets\.demo\.organs': unknown dataset\(s\) \['nope'\]"),
        (lambda c: c["datasets"].__setitem__("own", {"adapter": "folder", "path": "x", "modality": "ct",
                                                     "mask_threshold": 256}),
         r"datasets\.own\.mask_threshold': 256 is greater than the maximum of 255"),
        (lambda c: c["perturb"].update(include=["rotation", "hair"], exclude=["hair"]),
         r"perturb\.exclude': \['hair'\] also in perturb\.include"),
        (lambda c: c["vlm"].setdefault("perturbations", {}).update(include=["blink"], exclude=["blink"]),
         r"vlm\.perturbations\.exclude': \['blink'\] also in"),
        (lambda c: c["vlm"]["models"].__setitem__("medgemma", {"kind": "local"}),
         r"vlm\.models\.medgemma\.path': required for a local model"),
        (lambda c: c["vlm"].setdefault("tiny_training", {}).__setitem__("dataset", "omni"),
         r"vlm\.tiny_training\.dataset': 'omni' is not a VLM dataset"),
    ],
)
def test_cross_field_mistakes_are_named(repo: Path, edit, expected: str) -> None:
    cfg = _edited(repo, edit)
    with pytest.raises(ConfigError, match=expected):
        validate_config(cfg)


def test_unused_settings_referring_to_absent_things_pass(repo: Path) -> None:
    def edit(c: dict) -> None:
        # own endpoints only: the (disabled, unset) judge's default endpoint is gone, and that is fine
        mine = {"base_url": "http://x/v1", "model": "m", "api_key_env": "K"}
        c["vlm"]["api"] = {"endpoints": {"mine": mine}}
        c["vlm"]["models"] = {"mine": {"kind": "api", "enabled": False}}

    validate_config(_edited(repo, edit))


def test_missing_credentials_lists_each_variable_once(repo: Path) -> None:
    def edit(c: dict) -> None:
        c["vlm"]["models"]["gpt_4o_mini"] = {"kind": "api"}
        c["vlm"]["models"]["other"] = {"kind": "api", "api_key_env": "OPENAI_API_KEY", "base_url": "http://x",
                                       "api_model": "m"}
        c["vlm"]["models"]["off"] = {"kind": "api", "enabled": False, "api_key_env": "OFF_KEY",
                                     "base_url": "http://x", "api_model": "m"}
        c["vlm"]["judge"] = {"enabled": True, "endpoint": "gemini_2_5_flash"}

    cfg = validate_config(_edited(repo, edit))
    assert missing_credentials(cfg, environ={}) == {
        "OPENAI_API_KEY": ["vlm.models.gpt_4o_mini", "vlm.models.other"],
        "GEMINI_API_KEY": ["vlm.judge (endpoint gemini_2_5_flash)"],
    }
    assert missing_credentials(cfg, environ={"OPENAI_API_KEY": "k", "GEMINI_API_KEY": "g"}) == {}
    cfg["vlm"]["datasets"] = {}  # no VLM jobs: no key needed
    assert missing_credentials(cfg, environ={}) == {}
