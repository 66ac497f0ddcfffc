"""Real dataset adapters on tiny copies of each publisher's layout (built by build_fixture_resources)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfm_robust.config import default_config
from medfm_robust.data.adapters import read_brain_tumor_mat
from medfm_robust.data.fixtures import build_fixture_resources, fixture_sample, save, write_matlab_v73
from medfm_robust.data.ingest import ingest_dataset
from medfm_robust.data.registry import dataset_modality, get_adapter
from medfm_robust.errors import DataError

DATA = {
    **default_config()["data"],
    "image_size": 64, "splits": {"train": 0.6, "val": 0.2, "test": 0.2},
    "on_error": "fail",
}


@pytest.fixture(scope="module")
def resources(tmp_path_factory) -> Path:
    return build_fixture_resources(tmp_path_factory.mktemp("fx") / "resources", with_models=False)


def _items(adapter: str, path: Path, **extra):
    spec = {"adapter": adapter, "path": str(path), "mask_threshold": 127, **extra}
    return {it.image_id: it for it in get_adapter(adapter).list_items("ds", spec, path, 0)}


def test_isic2016_pairs_images_with_segmentation_masks(resources: Path) -> None:
    root = resources / "datasets" / "ISIC2016"
    items = _items("isic2016", root)
    assert sorted(items) == [f"ISIC_{i:07d}" for i in (0, 1, 2, 3, 100, 101)]
    it = items["ISIC_0000002"]
    assert it.source == "ISBI2016_ISIC_Part1_Training_Data/ISIC_0000002.jpg"
    image, mask = it.load()
    assert image.dtype == np.uint8 and image.shape == (80, 96, 3) and mask.shape == (80, 96)
    _, expected = fixture_sample("dermoscopy", "ISIC_0000002", (80, 96))
    np.testing.assert_array_equal(mask, expected)
    assert dataset_modality("isic", {"adapter": "isic2016"}) == "dermoscopy"


def test_isic2016_missing_mask_is_named(resources: Path, tmp_path: Path) -> None:
    root = tmp_path / "isic"
    shutil.copytree(resources / "datasets" / "ISIC2016", root)
    (root / "ISBI2016_ISIC_Part1_Test_GroundTruth" / "ISIC_0000100_Segmentation.png").unlink()
    with pytest.raises(DataError, match=r"ISIC_0000100_Segmentation\.png"):
        _items("isic2016", root)["ISIC_0000100"].load()


def test_kvasir_jpeg_masks_thresholded_at_127(resources: Path) -> None:
    root = resources / "datasets" / "Kvasir-SEG"
    items = _items("kvasir_seg", root)
    assert len(items) == 4
    sid = "cju0001kvasirfixture"
    _, mask = items[sid].load()
    _, truth = fixture_sample("endoscopy", sid, (80, 88))
    raw = np.asarray(Image.open(root / "Kvasir-SEG" / "masks" / f"{sid}.jpg"))
    wrong_old = ((raw > 0) != truth).sum()
    assert (mask != truth).sum() < wrong_old
    assert (mask != truth).sum() <= 0.02 * truth.size


def test_kvasir_accepts_the_unzipped_folder_itself(resources: Path) -> None:
    assert len(_items("kvasir_seg", resources / "datasets" / "Kvasir-SEG" / "Kvasir-SEG")) == 4


def test_brain_tumor_mat_v73_transposed_and_sixteen_bit(resources: Path) -> None:
    root = resources / "datasets" / "brain_tumor_figshare"
    items = _items("brain_tumor", root)
    assert sorted(items) == ["1", "2", "3", "4"]  # cvind.mat is not an image
    image, mask = items["3"].load()
    img8, truth = fixture_sample("mri", "3", (60, 76))
    assert image.dtype == np.uint16 and image.shape == (60, 76)
    np.testing.assert_array_equal(image, img8.astype(np.uint16) * 12)
    np.testing.assert_array_equal(mask, truth)
    with open(root / "brainTumorDataPublic_767-1532" / "3.mat", "rb") as fh:
        assert fh.read(19) == b"MATLAB 7.3 MAT-file"


def test_brain_tumor_negative_values_are_clipped_and_corrupt_files_named(tmp_path: Path) -> None:
    img = np.array([[-5, 10, 3000], [7, 0, 1]], np.int16)
    path = write_matlab_v73(tmp_path / "9.mat", img, np.array([[0, 1, 1], [0, 0, 0]], bool))
    image, mask = read_brain_tumor_mat(path)
    assert image.dtype == np.uint16 and image[0, 0] == 0 and image[0, 2] == 3000
    assert mask.sum() == 2 and mask[0, 1]
    bad = tmp_path / "10.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    with pytest.raises(DataError, match=r"10\.mat"):
        read_brain_tumor_mat(bad)


def test_glaucoma_disc_and_cup_from_one_source(resources: Path) -> None:
    root = resources / "datasets" / "SMDG"
    disc, cup = _items("glaucoma_disc", root), _items("glaucoma_cup", root)
    assert len(disc) == 4 and len(cup) == 3 and set(cup) < set(disc)
    assert "BEH-999" not in disc  # an image without an annotation is not part of the set
    img_d, m_disc = disc["DRISHTI-GS1-TRAIN-1"].load()
    img_c, m_cup = cup["DRISHTI-GS1-TRAIN-1"].load()
    np.testing.assert_array_equal(img_d, img_c)
    assert m_cup.sum() < m_disc.sum() and not (m_cup & ~m_disc).any()
    assert dataset_modality("g", {"adapter": "glaucoma_cup"}) == "fundus"


def test_glaucoma_accepts_doubled_kaggle_folders(resources: Path, tmp_path: Path) -> None:
    root = tmp_path / "smdg"
    for name in ("full-fundus", "optic-disc", "optic-cup"):
        shutil.copytree(resources / "datasets" / "SMDG" / name, root / name / name)
    assert len(_items("glaucoma_disc", root)) == 4


def test_busi_merges_every_mask_and_keeps_normal_images_out(resources: Path, tmp_path: Path) -> None:
    root = resources / "datasets" / "BUSI"
    items = _items("busi", root)
    assert len(items) == 12 and "benign_1" in items and "normal_4" in items
    _, mask = items["malignant_1"].load()  # `_mask.png` + `_mask_1.png`
    _, truth = fixture_sample("ultrasound", "malignant1", (70, 90))
    np.testing.assert_array_equal(mask, truth)
    report = ingest_dataset(
        "busi", {"adapter": "busi", "path": str(root)}, DATA, tmp_path / "out", progress=False
    )
    assert report["n_excluded_empty_mask"] == 4  # the normal images
    assert report["n_kept"] == 8 and report["modality"] == "ultrasound"


def test_busi_image_without_mask_is_an_error(resources: Path, tmp_path: Path) -> None:
    root = tmp_path / "busi"
    shutil.copytree(resources / "datasets" / "BUSI", root)
    (root / "Dataset_BUSI_with_GT" / "benign" / "benign (2)_mask.png").unlink()
    with pytest.raises(DataError, match=r"benign \(2\)\.png"):
        _items("busi", root)["benign_2"].load()


def test_folder_adapter_with_suffix_in_one_folder(tmp_path: Path) -> None:
    root = tmp_path / "own"
    for i in range(3):
        img, msk = fixture_sample("pathology", f"p{i}", (40, 40))
        save(root / "all" / f"slide{i}.png", img)
        save(root / "all" / f"slide{i}_gt.png", msk.astype(np.uint8) * 255)
    items = _items("folder", root, images_dir="all", masks_dir="all", mask_suffix="_gt", modality="pathology")
    assert sorted(items) == ["slide0", "slide1", "slide2"]
    _, mask = items["slide1"].load()
    np.testing.assert_array_equal(mask, fixture_sample("pathology", "p1", (40, 40))[1])
    with pytest.raises(DataError, match="mask_suffix"):
        _items("folder", root, images_dir="all", masks_dir="all", mask_suffix="")


def test_folder_adapter_mismatched_sizes_are_named(tmp_path: Path) -> None:
    root = tmp_path / "own"
    img, msk = fixture_sample("xray", "a", (40, 40))
    save(root / "images" / "a.png", img)
    save(root / "masks" / "a.png", msk[:30].astype(np.uint8) * 255)
    with pytest.raises(DataError, match=r"masks/a\.png"):
        _items("folder", root, modality="xray")["a"].load()


def test_every_paper_dataset_ingests_from_the_fixture(resources: Path, tmp_path: Path) -> None:
    from medfm_robust.config import load_config
    from medfm_robust.data.fixtures import PAPER_FOLDERS

    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "paper_full.yaml")  # paper.yaml + BUSI
    assert set(cfg["datasets"]) == set(PAPER_FOLDERS)
    for name, spec in cfg["datasets"].items():
        spec = {**spec, "path": str(resources / Path(spec["path"]).relative_to("resources"))}
        report = ingest_dataset(name, spec, DATA, tmp_path / name, progress=False)
        assert report["n_kept"] >= 3, name


def test_brain_tumor_older_v5_mat_files_are_read_too(tmp_path: Path) -> None:
    from scipy.io import savemat

    img = np.arange(12, dtype=np.int16).reshape(3, 4) * 100
    mask = np.zeros((3, 4), np.uint8)
    mask[1, 2] = 1
    savemat(tmp_path / "1.mat", {"cjdata": {"image": img, "tumorMask": mask, "label": 2.0}})
    image, m = read_brain_tumor_mat(tmp_path / "1.mat")
    np.testing.assert_array_equal(image, img.astype(np.uint16))
    assert m.sum() == 1 and m[1, 2]
    savemat(tmp_path / "2.mat", {"cjdata": {"image": img}})
    with pytest.raises(DataError, match=r"2\.mat: field cjdata\.tumorMask"):
        read_brain_tumor_mat(tmp_path / "2.mat")


def test_glaucoma_label_map_layout(tmp_path: Path) -> None:
    root = tmp_path / "refuge"
    yy, xx = np.mgrid[0:50, 0:60]
    r = np.hypot(yy - 25, xx - 30)
    label = np.full((50, 60), 255, np.uint8)
    label[r < 12] = 128
    label[r < 5] = 0
    for i in range(3):
        save(root / "images" / f"g{i:04d}.jpg", fixture_sample("fundus", f"r{i}", (50, 60))[0])
        save(root / "masks" / f"g{i:04d}.png", label)
    disc, cup = _items("glaucoma_disc", root), _items("glaucoma_cup", root)
    assert sorted(disc) == ["g0000", "g0001", "g0002"] == sorted(cup)
    _, d = disc["g0001"].load()
    _, c = cup["g0001"].load()
    np.testing.assert_array_equal(d, r < 12)
    np.testing.assert_array_equal(c, r < 5)
    with pytest.raises(DataError, match="full-fundus"):
        _items("glaucoma_disc", tmp_path / "refuge" / "images")


def _write_dx_dicom(path: Path, stored: np.ndarray, photometric: str, bits: int = 12) -> None:
    """A tiny digital X-ray (DX) slice in the official DICOM format, unsigned ``bits``-bit stored values."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, generate_uid(), "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = stored.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_monochrome1_radiographs_are_read_with_larger_meaning_brighter(tmp_path: Path) -> None:
    from medfm_robust.data.adapters.files import read_source

    yy, xx = np.mgrid[0:24, 0:32]
    bright_bone = (np.hypot(yy - 12, xx - 16) < 6) * 3000 + xx * 20  # as displayed: bone bright
    _write_dx_dicom(tmp_path / "m2.dcm", bright_bone, "MONOCHROME2")
    _write_dx_dicom(tmp_path / "m1.dcm", 4095 - bright_bone, "MONOCHROME1")  # stored inverted (min = white)
    m2, m1 = read_source(tmp_path / "m2.dcm"), read_source(tmp_path / "m1.dcm")
    assert m1.dtype == m2.dtype == np.uint16
    np.testing.assert_array_equal(m1, bright_bone)
    np.testing.assert_array_equal(m2, bright_bone)
    _write_dx_dicom(tmp_path / "p.dcm", bright_bone, "PALETTE COLOR")
    with pytest.raises(DataError, match=r"p\.dcm: PhotometricInterpretation PALETTE COLOR"):
        read_source(tmp_path / "p.dcm")


def test_monochrome1_inversion_covers_the_stored_bit_range() -> None:
    from medfm_robust.data.adapters.files import invert_monochrome1

    v = np.array([[0, 1, 4095]], np.uint16)
    np.testing.assert_array_equal(invert_monochrome1(v, 12), [[4095, 4094, 0]])
    s = np.array([[-2048, 0, 2047]], np.int16)
    np.testing.assert_array_equal(invert_monochrome1(s, 12, 1), [[2047, -1, -2048]])
