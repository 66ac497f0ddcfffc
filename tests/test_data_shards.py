"""Canonical shards: splits, mask binarisation, resizing, empty masks, corrupt files, determinism."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medfm_robust.boxes import box_from_mask
from medfm_robust.config import default_config
from medfm_robust.data import shards
from medfm_robust.data.fixtures import fixture_sample, save
from medfm_robust.data.ingest import check_dataset_paths, ingest_dataset
from medfm_robust.data.registry import ADAPTERS
from medfm_robust.errors import ConfigError, DataError
from medfm_robust.io import decode_png, encode_png

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
DATA = {
    **default_config()["data"],
    "image_size": 64, "splits": FRACTIONS, "on_error": "fail",
}


def _folder_dataset(root: Path, n: int = 10, empty: tuple[int, ...] = (), size=(40, 52)) -> Path:
    for i in range(n):
        img, msk = fixture_sample("dermoscopy", f"f{i}", size)
        if i in empty:
            msk[:] = False
        save(root / "images" / f"img{i:02d}.png", img)
        save(root / "masks" / f"img{i:02d}_mask.png", msk.astype(np.uint8) * 255)
    return root


def _folder_spec(root: Path) -> dict:
    return {
        "adapter": "folder",
        "path": str(root),
        "modality": "dermoscopy",
        "images_dir": "images",
        "masks_dir": "masks",
        "mask_suffix": "_mask.png",
        "mask_threshold": 127,
    }


def test_splits_are_order_independent_and_follow_fractions() -> None:
    ids = [f"case{i:04d}" for i in range(1000)]
    a = shards.assign_splits("ds", ids, FRACTIONS)
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    assert shards.assign_splits("ds", shuffled, FRACTIONS) == a
    counts = {s: sum(v == s for v in a.values()) for s in shards.SPLITS}
    assert counts == {"train": 600, "val": 200, "test": 200}
    assert shards.assign_splits("other", ids, FRACTIONS) != a
    # a few more images move only images next to a boundary
    b = shards.assign_splits("ds", [*ids, "extra1", "extra2"], FRACTIONS)
    assert sum(b[i] != a[i] for i in ids) <= 4


def test_split_sizes_round_to_the_fractions() -> None:
    assert shards.split_sizes(48, FRACTIONS) == {"train": 29, "val": 10, "test": 9}
    assert shards.split_sizes(16, {"train": 0.5, "val": 0.25, "test": 0.25}) == {
        "train": 8,
        "val": 4,
        "test": 4,
    }
    assert shards.split_sizes(5, {"train": 1.0, "val": 0.0, "test": 0.0}) == {"train": 5, "val": 0, "test": 0}


def test_tiny_datasets_never_leave_a_split_empty() -> None:
    for n in range(3, 12):
        for ds in ("a", "b", "c", "d"):
            got = shards.assign_splits(ds, [f"x{i}" for i in range(n)], FRACTIONS)
            assert set(got.values()) == {"train", "val", "test"}, (ds, n, got)


def test_bad_fractions_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"data\.splits"):
        shards.assign_splits("ds", ["a"], {"train": 0.7, "val": 0.2, "test": 0.2})


def test_jpeg_masks_are_binarised_at_127_not_above_zero(tmp_path: Path) -> None:
    _, msk = fixture_sample("endoscopy", "jpeg", (80, 88))
    path = save(tmp_path / "m.jpg", msk.astype(np.uint8) * 255, quality=60)
    raw = np.asarray(Image.open(path))
    assert ((raw > 0) & ~msk).sum() > 20  # JPEG noise outside the lesion
    ours = shards.binarise_mask(raw, 127, str(path), unit_labels=False)
    assert (ours != msk).sum() <= 0.02 * msk.size
    assert (ours != msk).sum() < ((raw > 0) != msk).sum()


def test_unit_label_masks_and_colour_masks() -> None:
    m = np.zeros((5, 6), np.uint8)
    m[1:3, 2:4] = 1
    assert shards.binarise_mask(m, 127, "m").sum() == 4
    assert shards.binarise_mask(m, 127, "m", unit_labels=False).sum() == 0
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    assert shards.binarise_mask(rgb, 127, "m").sum() == 1


def test_resize_keeps_dtype_and_mask_stays_binary() -> None:
    img16 = (np.arange(50 * 70, dtype=np.uint16).reshape(50, 70) * 17) % 4000
    out = shards.resize_image(img16.astype(np.uint16), 32)
    assert out.dtype == np.uint16 and out.shape == (32, 32) and out.max() > 255
    rgb = np.zeros((50, 70, 3), np.uint8)
    assert shards.resize_image(rgb, 32).shape == (32, 32, 3)
    mask = np.zeros((50, 70), bool)
    mask[10:20, 30:60] = True
    small = shards.resize_mask(mask, 32)
    assert small.dtype == bool and 0 < small.sum() < mask.sum()


def test_box_is_inclusive() -> None:
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    assert box_from_mask(m) == [3, 2, 8, 4]
    assert box_from_mask(np.zeros((4, 4), bool)) is None


def test_shard_schema_and_round_trip(tmp_path: Path) -> None:
    root = _folder_dataset(tmp_path / "ds", n=8)
    report = ingest_dataset("mine", _folder_spec(root), DATA, tmp_path / "out", progress=False)
    assert sum(report["counts"].values()) == 8
    seen = 0
    for split in shards.SPLITS:
        table = pq.read_table(tmp_path / "out" / f"{split}.parquet")
        assert table.schema.equals(shards.SHARD_SCHEMA)
        rows = table.to_pylist()
        assert [r["image_id"] for r in rows] == sorted(r["image_id"] for r in rows)
        for r in rows:
            seen += 1
            image, mask = shards.decode_row(r)
            assert image.shape == (64, 64, 3) and r["channels"] == 3 and (r["height"], r["width"]) == (64, 64)
            assert r["split"] == split and r["modality"] == "dermoscopy"
            assert set(np.unique(decode_png(r["mask_png"]))) <= {0, 255}
            assert list(r["box"]) == box_from_mask(mask)
            assert r["source"].startswith("images/img")
    assert seen == 8


def test_empty_masks_are_excluded_and_counted(tmp_path: Path) -> None:
    root = _folder_dataset(tmp_path / "ds", n=9, empty=(2, 5))
    report = ingest_dataset("mine", _folder_spec(root), DATA, tmp_path / "out", progress=False)
    assert report["n_excluded_empty_mask"] == 2
    assert [r["image_id"] for r in report["excluded_empty_mask"]] == ["img02", "img05"]
    ids = {
        i
        for s in shards.SPLITS
        for i in pq.read_table(tmp_path / "out" / f"{s}.parquet")["image_id"].to_pylist()
    }
    assert len(ids) == 7 and "img02" not in ids
    on_disk = json.loads((tmp_path / "out" / "ingest_report.json").read_text())
    assert on_disk["counts"] == report["counts"]


def test_corrupt_file_stops_with_its_path_or_is_skipped(tmp_path: Path) -> None:
    root = _folder_dataset(tmp_path / "ds", n=6)
    bad = root / "images" / "img03.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"img03\.png"):
        ingest_dataset("mine", _folder_spec(root), DATA, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "train.parquet").exists()
    report = ingest_dataset(
        "mine", _folder_spec(root), {**DATA, "on_error": "skip"}, tmp_path / "out", progress=False
    )
    assert report["n_skipped"] == 1 and report["skipped"][0]["source"] == "images/img03.png"
    assert "img03.png" in report["skipped"][0]["error"]
    assert sum(report["counts"].values()) == 5


def test_missing_mask_names_the_mask(tmp_path: Path) -> None:
    root = _folder_dataset(tmp_path / "ds", n=4)
    (root / "masks" / "img01_mask.png").unlink()
    with pytest.raises(DataError, match=r"img01"):
        ingest_dataset("mine", _folder_spec(root), DATA, tmp_path / "out", progress=False)


def test_output_is_byte_identical_on_rerun_and_shuffled_order(tmp_path: Path, monkeypatch) -> None:
    root = _folder_dataset(tmp_path / "ds", n=12)
    ingest_dataset("mine", _folder_spec(root), DATA, tmp_path / "a", progress=False)
    ingest_dataset("mine", _folder_spec(root), DATA, tmp_path / "b", progress=False)
    original = ADAPTERS["folder"]

    def shuffled(*args, **kwargs):
        items = original.list_items(*args, **kwargs)
        random.Random(7).shuffle(items)
        return items[::-1]

    monkeypatch.setitem(ADAPTERS, "folder", dataclasses.replace(original, list_items=shuffled))
    ingest_dataset("mine", _folder_spec(root), DATA, tmp_path / "c", progress=False)
    ingest_dataset("mine", _folder_spec(root), DATA, tmp_path / "d", progress=False, workers=3)
    for name in ("train.parquet", "val.parquet", "test.parquet", "ingest_report.json"):
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes() == (tmp_path / "c" / name).read_bytes(), name
        assert a == (tmp_path / "d" / name).read_bytes(), name


def test_n_images_cap_takes_an_order_independent_subset(tmp_path: Path) -> None:
    root = _folder_dataset(tmp_path / "ds", n=12)
    spec = {**_folder_spec(root), "n_images": 5}
    report = ingest_dataset("mine", spec, DATA, tmp_path / "a", progress=False)
    assert report["n_kept"] == 5 and report["n_listed"] == 12
    threaded = ingest_dataset("mine", spec, DATA, tmp_path / "b", progress=False, workers=2)
    assert threaded == report
    kept = sorted(
        i
        for s in shards.SPLITS
        for i in pq.read_table(tmp_path / "a" / f"{s}.parquet")["image_id"].to_pylist()
    )
    assert kept != [f"img{i:02d}" for i in range(5)]  # not simply the first files


def test_sixteen_bit_images_stay_sixteen_bit(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    img, msk = fixture_sample("mri", "u16", (48, 60))
    save(root / "images" / "a.png", img.astype(np.uint16) * 200)
    save(root / "masks" / "a.png", msk.astype(np.uint8) * 255)
    spec = {"adapter": "folder", "path": str(root), "modality": "mri", "mask_threshold": 127}
    ingest_dataset(
        "m16",
        spec,
        {**DATA, "image_size": None, "splits": {"train": 1, "val": 0, "test": 0}},
        tmp_path / "out",
        progress=False,
    )
    row = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()[0]
    image, _ = shards.decode_row(row)
    assert image.dtype == np.uint16 and image.max() > 255 and image.shape == (48, 60)
    np.testing.assert_array_equal(image, img.astype(np.uint16) * 200)
    assert decode_png(encode_png(image)).dtype == np.uint16


def test_missing_dataset_folder_names_key_and_path(tmp_path: Path) -> None:
    cfg = {
        "datasets": {
            "kv": {"adapter": "kvasir_seg", "path": str(tmp_path / "nowhere")},
            "demo_ct": {"adapter": "demo", "modality": "ct"},
        }
    }
    with pytest.raises(ConfigError, match=r"datasets\.kv\.path.*nowhere"):
        check_dataset_paths(cfg)
    with pytest.raises(ConfigError, match=r"datasets\.kv\.path"):
        check_dataset_paths({"datasets": {"kv": {"adapter": "kvasir_seg"}}})
    with pytest.raises(ConfigError, match=r"datasets\.x\.modality"):
        check_dataset_paths(
            {"datasets": {"x": {"adapter": "isic2016", "modality": "ct", "path": str(tmp_path)}}}
        )
    with pytest.raises(ConfigError, match=r"datasets\.f\.modality"):
        check_dataset_paths({"datasets": {"f": {"adapter": "folder", "path": str(tmp_path)}}})
    with pytest.raises(ConfigError, match=r"data\.splits"):
        check_dataset_paths({"data": {"splits": {"train": 0.5, "val": 0.5, "test": 0.5}}, "datasets": {}})


def test_modality_is_filled_in_from_the_adapter(tmp_path: Path) -> None:
    cfg = {"datasets": {"kv": {"adapter": "kvasir_seg", "path": str(tmp_path)}, "b": {"adapter": "mni152"}}}
    check_dataset_paths(cfg)
    assert cfg["datasets"]["kv"]["modality"] == "endoscopy" and cfg["datasets"]["b"]["modality"] == "mri"
