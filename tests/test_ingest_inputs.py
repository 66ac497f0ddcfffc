"""Ingestion of awkward user folders: non-ASCII names, masks without images, oversized images."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from medfm_robust.config import default_config
from medfm_robust.data.adapters import safe_id
from medfm_robust.data.fixtures import fixture_sample, save
from medfm_robust.data.ingest import ingest_dataset
from medfm_robust.data.shards import SPLITS
from medfm_robust.errors import DataError
from medfm_robust.io import DEFAULT_MAX_PIXELS, set_max_pixels

DATA = {
    **default_config()["data"],
    "image_size": 32, "splits": {"train": 0.6, "val": 0.2, "test": 0.2},
    "on_error": "fail",
}


@pytest.fixture(autouse=True)
def _restore_limit():  # type: ignore[no-untyped-def]
    yield
    set_max_pixels(DEFAULT_MAX_PIXELS)


def _dataset(root: Path, stems: list[str], size: tuple[int, int] = (40, 52)) -> dict:
    for i, stem in enumerate(stems):
        img, msk = fixture_sample("dermoscopy", f"s{i}", size)
        save(root / "images" / f"{stem}.png", img)
        save(root / "masks" / f"{stem}_mask.png", msk.astype(np.uint8) * 255)
    return {"adapter": "folder", "path": str(root), "modality": "dermoscopy", "images_dir": "images",
            "masks_dir": "masks", "mask_suffix": "_mask.png", "mask_threshold": 127}


def _ids(out: Path) -> list[str]:
    return sorted(i for s in SPLITS for i in pq.read_table(out / f"{s}.parquet")["image_id"].to_pylist())


def test_ids_of_non_ascii_names_are_distinct_and_stable() -> None:
    assert safe_id("ISIC_0000001") == "ISIC_0000001" and safe_id("benign (1)") == "benign_1"  # unchanged
    stems = ("图像", "照片", "病例_01", "病例_02", "_01", "Ärzte")
    ids = [safe_id(s) for s in stems]
    assert len(set(ids)) == len(ids)
    assert all(i.isascii() and i and i == safe_id(s) for i, s in zip(ids, stems, strict=True))
    assert ids[4] == "01" and ids[2].startswith("01_") and len(ids[0]) == 8


def test_non_ascii_file_names_are_ingested(tmp_path: Path) -> None:
    stems = ["图像", "照片", "病例_01", "rtg-α", "plain"]
    report = ingest_dataset("zh", _dataset(tmp_path / "ds", stems), DATA, tmp_path / "out", progress=False)
    assert report["n_kept"] == 5 and report["n_skipped"] == 0
    assert _ids(tmp_path / "out") == sorted(safe_id(s) for s in stems)


def test_mask_without_image_is_reported_by_name(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    spec = _dataset(tmp_path / "ds", ["a", "b", "c"])
    shutil.copy(tmp_path / "ds" / "masks" / "a_mask.png", tmp_path / "ds" / "masks" / "lost_mask.png")
    with caplog.at_level(logging.WARNING):
        report = ingest_dataset("m", spec, DATA, tmp_path / "out", progress=False)
    assert report["n_kept"] == 3
    warned = [r.getMessage() for r in caplog.records if "mask without an image" in r.getMessage()]
    assert len(warned) == 1 and "lost_mask.png" in warned[0] and "no image named lost.*" in warned[0]


def test_image_size_limit_from_config(tmp_path: Path) -> None:
    spec = _dataset(tmp_path / "ds", ["a", "b", "c"])
    with pytest.raises(DataError, match=r"a\.png: image is 52 x 40 = 2,080 pixels, above the limit of 2,000"):
        ingest_dataset("m", spec, {**DATA, "max_pixels": 2000}, tmp_path / "out", progress=False)
    small = _dataset(tmp_path / "ds", ["d"], size=(30, 30))  # 900 pixels: kept, the others skipped
    report = ingest_dataset("m", small, {**DATA, "max_pixels": 2000, "on_error": "skip"}, tmp_path / "out",
                            progress=False)
    assert report["n_kept"] == 1 and report["n_skipped"] == 3
    assert all("above the limit of 2,000" in s["error"] for s in report["skipped"])
    unlimited = ingest_dataset("m", small, {**DATA, "max_pixels": None}, tmp_path / "o2", progress=False)
    assert unlimited["n_kept"] == 4
