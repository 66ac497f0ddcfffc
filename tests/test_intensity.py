"""Intensity policy: ingestion (none, value_range, percentile, window, CT presets on DICOM / NIfTI), the
shard's ``value_range``, and its use by model preprocessing, evaluation and attacks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from test_seg_support import SMALL, ellipse_sample

from medfm_robust import intensity as I
from medfm_robust.config import default_config
from medfm_robust.data.fixtures import save
from medfm_robust.data.ingest import ingest_dataset
from medfm_robust.errors import ConfigError, DataError
from medfm_robust.io import decode_png
from medfm_robust.seg.attacks import AttackSettings, quantize, quantize_to_range, run_attack
from medfm_robust.seg.evaluate import (
    EvalSettings,
    RunIdentity,
    evaluate_dataset,
    load_perturbed_samples,
    load_test_samples,
)
from medfm_robust.seg.models import build_tiny_sam, images_to_batch, to_unit_range
from medfm_robust.seg.prompts import BoxJitter

ALL_TEST = {
    **default_config()["data"],
    "image_size": None, "splits": {"train": 0.0, "val": 0.0, "test": 1.0},
    "on_error": "fail",
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _folder(
    root: Path, images: dict[str, np.ndarray], masks: dict[str, np.ndarray], ext: str = ".png"
) -> dict:
    for name, img in images.items():
        if ext == ".png":
            save(root / "images" / f"{name}.png", img)
        save(root / "masks" / f"{name}.png", masks[name].astype(np.uint8) * 255)
    return {"adapter": "folder", "path": str(root), "modality": "mri"}


def _shard(out: Path) -> list[dict]:
    return pq.read_table(out / "test.parquet").to_pylist()


# ---------------------------------------------------------------------------------------------- policies


def test_parse_policy_canonical_json_and_errors() -> None:
    assert I.policy_json(I.parse_policy("none")) == '"none"'
    assert I.policy_json(I.parse_policy({"percentile": [0.5, 99.5]})) == '{"percentile":[0.5,99.5]}'
    assert I.policy_json(I.parse_policy({"window": [0, 1300]})) == '{"window":[0.0,1300.0]}'
    assert I.parse_policy({"ct_preset": "lung"}) == {"ct_preset": "lung"}
    for bad, match in (
        ({"window": [5, 5]}, r"ds\.intensity\.window"),
        ({"percentile": [0, 101]}, r"ds\.intensity\.percentile"),
        ({"ct_preset": "liver"}, "unknown preset"),
        ({"window": [0, 1], "percentile": [1, 99]}, "one of"),
        ("raw", "one of"),
    ):
        with pytest.raises(ConfigError, match=match):
            I.parse_policy(bad, "ds.intensity")


def test_none_keeps_values_and_records_the_range() -> None:
    u8 = np.array([[3, 200]], np.uint8)
    out, vr = I.apply_policy(u8, "none", "a.png")
    assert out is u8 and vr == (0.0, 255.0)
    raw = np.array([[12, 1300], [40, 700]], np.int16)  # MATLAB int16 slice, non-negative
    out, vr = I.apply_policy(raw, "none", "a.mat")
    assert out.dtype == np.uint16 and np.array_equal(out, raw) and vr == (12.0, 1300.0)
    assert I.apply_policy(raw.astype(np.uint16), "none", "a.png", full_dtype_range=True)[1] == (0.0, 65535.0)
    out, vr = I.apply_policy(raw, I.parse_policy({"value_range": [0, 4095]}), "a.mat")
    assert out.dtype == np.uint16 and vr == (0.0, 4095.0)
    with pytest.raises(DataError, match=r"a\.dcm: image has values in \[-1000"):
        I.apply_policy(np.array([[-1000, 40]], np.int16), "none", "a.dcm")


def test_percentile_and_fixed_windows_to_8_bits() -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 1300, size=(40, 50)).astype(np.uint16)
    out, vr = I.apply_policy(raw, I.parse_policy({"percentile": [0.5, 99.5]}), "x.mat")
    lo, hi = np.percentile(raw.astype(np.float64), [0.5, 99.5])
    expected = np.rint(np.clip((raw - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    assert out.dtype == np.uint8 and vr == (0.0, 255.0) and np.array_equal(out, expected)
    assert np.all(out[raw <= lo] == 0) and np.all(out[raw >= hi] == 255) and (raw >= hi).sum() >= 10
    out, _ = I.apply_policy(
        np.array([[0, 650, 1300, 2000]], np.uint16), I.parse_policy({"window": [0, 1300]}), "x"
    )
    assert out.tolist() == [[0, 128, 255, 255]]  # 127.5 rounds half to even: 128


def test_ct_preset_equals_dicom_linear_voi_and_needs_hu_sources() -> None:
    import pydicom.pixels
    from pydicom.dataset import Dataset

    hu = np.arange(-1200, 1600, dtype=np.float64)
    for preset, (centre, width) in I.CT_PRESETS.items():
        ours, _ = I.apply_policy(hu, {"ct_preset": preset}, "s.dcm")
        ds = Dataset()
        ds.PhotometricInterpretation, ds.PixelRepresentation, ds.BitsStored = "MONOCHROME2", 0, 16
        ds.WindowCenter, ds.WindowWidth = centre, width
        ref = np.rint(pydicom.pixels.apply_windowing(hu.copy(), ds) / 65535.0 * 255.0)
        assert np.abs(ours.astype(int) - ref).max() <= 1, preset  # rounding of a tie at most
        assert (ours == ref).mean() > 0.99, preset
    with pytest.raises(DataError, match="Hounsfield"):
        I.apply_policy(hu, {"ct_preset": "lung"}, "s.png")


def _write_ct_dicom(path: Path, stored: np.ndarray, intercept: float) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
    ds.PixelData = stored.astype("<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _ct_slice(size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """HU slice: air outside a soft-tissue disc with a bone rim and a lesion (the mask)."""
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    hu = np.where(r < 20, 40, -1000) + np.where((r >= 17) & (r < 20), 700, 0)
    lesion = np.hypot(yy - 20, xx - 26) < 5
    hu = np.where(lesion, 90, hu) + (yy % 7) * 3
    return hu.astype(np.int16), lesion


def test_ct_preset_at_ingestion_from_dicom_and_nifti(tmp_path: Path) -> None:
    import nibabel as nib

    hu, lesion = _ct_slice()
    root = tmp_path / "ct"
    _write_ct_dicom(root / "images" / "s1.dcm", hu + 1024, -1024.0)  # stored values as scanners write them
    nii = nib.Nifti1Image((hu + 1024).T.astype(np.int16)[:, :, None], np.eye(4))
    nii.header.set_slope_inter(1.0, -1024.0)
    nib.save(nii, root / "images" / "s2.nii.gz")
    for name in ("s1", "s2"):
        save(root / "masks" / f"{name}.png", lesion.astype(np.uint8) * 255)
    spec = {
        "adapter": "folder",
        "path": str(root),
        "modality": "ct",
        "intensity": {"ct_preset": "soft_tissue"},
    }
    report = ingest_dataset("ct", spec, ALL_TEST, tmp_path / "out", progress=False)
    rows = {r["image_id"]: r for r in _shard(tmp_path / "out")}
    assert report["intensity"] == {"ct_preset": "soft_tissue"} and sorted(rows) == ["s1", "s2"]
    expected, _ = I.apply_policy(hu.astype(np.float64), {"ct_preset": "soft_tissue"}, "ref.dcm")
    for row in rows.values():
        image = decode_png(row["image_png"])
        assert image.dtype == np.uint8 and np.array_equal(image, expected), row["source"]
        assert row["intensity"] == json.dumps({"ct_preset": "soft_tissue"}, separators=(",", ":"))
        assert row["value_range"] == [0.0, 255.0]
    assert image[0, 0] == 0 and image[24, 24] > 100  # air is black, soft tissue mid-grey
    with pytest.raises(DataError, match=r"s[12]\.(dcm|nii\.gz): image has .*'datasets\.ct\.intensity'"):
        ingest_dataset("ct", {**spec, "intensity": "none"}, ALL_TEST, tmp_path / "o2", progress=False)


# ---------------------------------------------------------------------------------------------- use


def test_data_range_and_to_unit() -> None:
    u8 = np.array([[0, 51, 255]], np.uint8)
    assert I.data_range(u8) == 255.0 and np.array_equal(I.to_unit(u8), u8.astype(np.float32) / 255.0)
    raw = np.array([[100, 400, 1400]], np.uint16)
    assert I.data_range(raw, [100, 1400]) == 1300.0
    assert I.to_unit(raw, [100, 1400]).tolist() == [[0.0, pytest.approx(300 / 1300), 1.0]]
    with pytest.raises(DataError, match="value_range"):
        I.data_range(raw)
    with pytest.raises(DataError, match="hi > lo"):
        I.to_unit(raw, [5, 5])


def test_model_preprocessing_of_a_raw_16_bit_slice_equals_its_8_bit_window() -> None:
    from torch import nn

    from medfm_robust.seg import models as M

    img8, _ = ellipse_sample(7, gray=True)
    img8 = img8[:, 5:]  # non-square, 64 x 59
    raw = img8.astype(np.uint16) * 5 + 100  # a 16-bit slice whose [100, 1375] window is exactly img8
    assert np.array_equal(I.window_to_uint8(raw, 100, 1375), img8)
    assert np.abs(to_unit_range(raw, (100, 1375)) - to_unit_range(img8)).max() <= 1e-7
    x16 = images_to_batch([raw], value_ranges=[(100, 1375)])
    x8 = images_to_batch([img8])
    dtype_rule = images_to_batch([raw], value_ranges=[(0, 65535)])  # what 16-bit slices got before
    parts = (nn.Identity(), nn.Identity(), nn.Identity())
    wrappers = {
        "sam_vit_b": M.SamLongestSide(*parts, input_size=128, name="sam_vit_b"),
        "medsam": M.MedSAMSegmenter(*parts),
        "sam_med2d": M.SamMed2DSegmenter(*parts),
        "lite_medsam": M.LiteMedSAMSegmenter(*parts),
    }
    for name, wrapper in wrappers.items():
        a, b = wrapper.preprocess(x16), wrapper.preprocess(x8)
        assert torch.allclose(a, b, atol=1e-4), name
    # SAM-Med2D standardises 0-255 values: under the dtype rule the slice was nearly black
    black = wrappers["sam_med2d"].preprocess(dtype_rule)
    assert (black - wrappers["sam_med2d"].preprocess(x8)).abs().max() > 1.0


def test_evaluation_reads_value_range_from_the_shard(tmp_path: Path) -> None:
    images8, images16, masks = {}, {}, {}
    for i in range(3):
        img, m = ellipse_sample(20 + i, gray=True)
        images8[f"im{i}"], images16[f"im{i}"], masks[f"im{i}"] = img, img.astype(np.uint16) * 5, m
    spec8 = _folder(tmp_path / "d8", images8, masks)
    spec16 = {**_folder(tmp_path / "d16", images16, masks), "intensity": {"value_range": [0, 1275]}}
    ingest_dataset("d8", spec8, ALL_TEST, tmp_path / "o8", progress=False)
    ingest_dataset("d16", spec16, ALL_TEST, tmp_path / "o16", progress=False)
    rows16 = _shard(tmp_path / "o16")
    assert decode_png(rows16[0]["image_png"]).dtype == np.uint16 and rows16[0]["value_range"] == [0.0, 1275.0]
    torch.manual_seed(0)
    model = build_tiny_sam(SMALL).eval()
    run = RunIdentity("tiny_sam", "zero_shot", None)
    settings = EvalSettings(batch_size=4, device="cpu")
    frames = {}
    for name in ("o8", "o16"):
        out = tmp_path / name / "clean_metrics.parquet"
        evaluate_dataset(
            run, "d", tmp_path / name / "test.parquet", {}, {"clean": out}, settings, model=model
        )
        frames[name] = pq.read_table(out).to_pandas()
    cols = ["image_id", "iou", "dice", "nsd", "hd95"]
    assert frames["o8"][cols].equals(frames["o16"][cols])
    # perturbed rows carry the shard's value_range forward (their own column wins; absent: the clean one's)
    clean = {
        s.image_id: s for s in load_test_samples(tmp_path / "o16" / "test.parquet", "d16", None, BoxJitter())
    }
    assert {s.value_range for s in clean.values()} == {(0.0, 1275.0)}
    frame = pd.DataFrame(
        [
            {
                "image_id": r["image_id"],
                "perturbation": "contrast",
                "category": "base",
                "level": lv,
                "image_png": r["image_png"],
                "mask_png": None,
                "box": r["box"],
                "ssim": 0.9,
                "in_band": True,
            }
            for r in rows16
            for lv in (1, 2)
        ]
    )
    frame.to_parquet(tmp_path / "p_without.parquet")
    frame.assign(value_range=[[0.0, 2550.0]] * len(frame)).to_parquet(tmp_path / "p_with.parquet")
    for name, expected in (("p_without", (0.0, 1275.0)), ("p_with", (0.0, 2550.0))):
        got = load_perturbed_samples(tmp_path / f"{name}.parquet", "contrast", clean, BoxJitter(), "d16")
        assert len(got) == 6 and {s.value_range for s in got} == {expected}, name
    with pytest.raises(DataError, match="without a value_range column"):
        pd.DataFrame(rows16).drop(columns=["value_range"]).to_parquet(tmp_path / "old.parquet")
        load_test_samples(tmp_path / "old.parquet", "d16", None, BoxJitter())


def test_own_range_of_raw_16_bit_images_under_none(tmp_path: Path) -> None:
    img, m = ellipse_sample(30, gray=True)
    raw = img.astype(np.uint16) * 5 + 100
    ingest_dataset(
        "r", _folder(tmp_path / "r", {"a": raw}, {"a": m}), ALL_TEST, tmp_path / "o", progress=False
    )
    (row,) = _shard(tmp_path / "o")
    assert row["intensity"] == '"none"'
    assert row["value_range"] == [float(raw.min()), float(raw.max())]


# ---------------------------------------------------------------------------------------------- attacks


def test_grid_quantisation_is_8_bit_for_8_bit_ranges() -> None:
    x = torch.rand(3, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(quantize_to_range(x, [(0, 255)] * 3), quantize(x, 8))


def test_attack_budget_and_grid_are_in_units_of_the_image_range() -> None:
    img8, mask = ellipse_sample(11, gray=True)
    raw = (img8.astype(np.float64) * 1300 / 255).round().astype(np.uint16)  # a slice stored in [0, 1300]
    vr = [(0.0, 1300.0)]
    torch.manual_seed(0)
    model = build_tiny_sam(SMALL).eval()
    x = images_to_batch([raw], value_ranges=vr)
    gt = torch.from_numpy(mask[None, None])
    box = torch.tensor([[8.0, 8.0, 56.0, 56.0]])
    for attack in ("fgsm", "pgd"):
        adv = run_attack(model, attack, 1, AttackSettings(), x, box, gt, [("d", "a")], 0, value_ranges=vr)
        stored = adv * 1300.0
        assert torch.abs(stored - stored.round()).max() < 1e-2  # on the image's integer grid
        delta = (stored.round() - torch.from_numpy(raw.astype(np.float32))).abs()
        assert delta.max() == 10.0  # eps 2/255 of a 1300 range = 10.2 stored units, not 2 (dtype) or 0
        assert (delta > 0).float().mean() > 0.5, attack


def test_to_rgb8_one_converter_for_8bit_consumers() -> None:
    """8-bit kept byte for byte; 16-bit windowed by its range (by the dtype range for VLM samples, which
    equals the former ``value / 257`` on every uint16 value); gray to 3 channels; bad input names it."""
    from medfm_robust.vlm.api import image_to_png
    from medfm_robust.vlm.models import to_pil_rgb

    u8 = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert np.array_equal(I.to_rgb8(u8), np.repeat(u8[:, :, None], 3, axis=2))
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    old_rule = np.round(every.astype(np.float64) / 257.0).astype(np.uint8)
    assert np.array_equal(I.to_rgb8(every, I.dtype_value_range(every))[:, :, 0], old_rule)
    assert np.array_equal(np.asarray(to_pil_rgb(every))[:, :, 1], old_rule)
    assert np.array_equal(decode_png(image_to_png(every))[:, :, 2], old_rule)
    raw = np.array([[0, 650, 1300]], np.uint16)
    assert I.to_rgb8(raw, (0, 1300))[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(DataError, match="value_range"):
        I.to_rgb8(raw)  # 16-bit needs its range
    with pytest.raises(DataError, match=r"scan\.png: shape"):
        I.to_rgb8(np.zeros((4, 4, 2), np.uint8), source="scan.png")
    with pytest.raises(DataError, match=r"scan\.png: dtype float32"):
        I.to_rgb8(np.zeros((4, 4), np.float32), source="scan.png")
