"""Patient-level splits: Brain Tumor ``cjdata.PID`` and the folder adapter's ``group_by``."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from medfm_robust.config import default_config
from medfm_robust.data import shards
from medfm_robust.data.adapters import read_brain_tumor_pid
from medfm_robust.data.fixtures import fixture_sample, save, write_matlab_v73
from medfm_robust.data.ingest import ingest_dataset
from medfm_robust.data.registry import ADAPTERS
from medfm_robust.errors import ConfigError, DataError

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
DATA = {
    **default_config()["data"],
    "image_size": None, "splits": FRACTIONS, "on_error": "fail",
}


def _patients(n_patients: int, seed: int = 0) -> dict[str, str]:
    """image id -> patient id, 1 to 25 slices per patient (like the ~233 patients of Brain Tumor)."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in range(n_patients):
        for k in range(int(rng.integers(1, 26))):
            out[f"{p * 100 + k}"] = f"P{p:03d}"
    return out


def _split_of_patient(assigned: dict[str, str], groups: dict[str, str]) -> dict[str, set[str]]:
    by_patient: dict[str, set[str]] = {}
    for image_id, split in assigned.items():
        by_patient.setdefault(groups[image_id], set()).add(split)
    return by_patient


def test_a_patient_lands_in_one_split_independent_of_order() -> None:
    groups = _patients(233)
    ids = list(groups)
    a = shards.assign_splits("brain_tumor", ids, FRACTIONS, groups)
    for seed in (1, 2):
        shuffled = ids[:]
        random.Random(seed).shuffle(shuffled)
        assert shards.assign_splits("brain_tumor", shuffled, FRACTIONS, dict(reversed(groups.items()))) == a
    assert all(len(s) == 1 for s in _split_of_patient(a, groups).values())
    counts = {s: sum(v == s for v in a.values()) for s in shards.SPLITS}
    largest = 25
    for s in shards.SPLITS:  # filled by patients: each split within one patient of its target
        assert abs(counts[s] - FRACTIONS[s] * len(ids)) <= largest, counts


def test_one_image_per_group_is_the_ungrouped_split() -> None:
    ids = [f"case{i:04d}" for i in range(500)]
    plain = shards.assign_splits("ds", ids, FRACTIONS)
    assert shards.assign_splits("ds", ids, FRACTIONS, {i: i for i in ids}) == plain
    for n in range(3, 9):  # tiny sets keep every split non-empty, as before
        small = [f"x{i}" for i in range(n)]
        assert shards.assign_splits("a", small, FRACTIONS, {i: i for i in small}) == shards.assign_splits(
            "a", small, FRACTIONS
        )


def test_few_patients_still_fill_every_split() -> None:
    groups = {f"s{i}": f"p{i // 3}" for i in range(12)}  # 4 patients of 3 slices
    got = shards.assign_splits("ds", list(groups), FRACTIONS, groups)
    assert set(got.values()) == {"train", "val", "test"}
    assert all(len(s) == 1 for s in _split_of_patient(got, groups).values())


def _brain(root: Path, pids: list[str]) -> None:
    for i, pid in enumerate(pids, start=1):
        img, msk = fixture_sample("mri", str(i), (40, 44))
        write_matlab_v73(root / f"{i}.mat", img.astype(np.int16) * 5, msk, pid=pid)


def _rows(out: Path) -> list[dict]:
    return [r for s in shards.SPLITS for r in pq.read_table(out / f"{s}.parquet").to_pylist()]


def test_brain_tumor_splits_by_pid(tmp_path: Path, monkeypatch) -> None:
    pids = [f"{100000 + i // 3}" for i in range(24)]  # 8 patients of 3 slices
    _brain(tmp_path / "bt", pids)
    assert read_brain_tumor_pid(tmp_path / "bt" / "1.mat") == "100000"
    spec = {"adapter": "brain_tumor", "path": str(tmp_path / "bt")}
    report = ingest_dataset("brain_tumor", spec, DATA, tmp_path / "a", progress=False)
    assert report["n_groups"] == 8 and sum(report["groups_per_split"].values()) == 8
    rows = _rows(tmp_path / "a")
    pid_of = {f"{i}": p for i, p in enumerate(pids, start=1)}
    split_of: dict[str, set[str]] = {}
    for r in rows:
        split_of.setdefault(pid_of[r["image_id"]], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values()) and len(split_of) == 8
    # the listing order does not matter
    original = ADAPTERS["brain_tumor"]

    def shuffled(*args):
        items = original.list_items(*args)
        random.Random(3).shuffle(items)
        return items

    monkeypatch.setitem(ADAPTERS, "brain_tumor", dataclasses.replace(original, list_items=shuffled))
    ingest_dataset("brain_tumor", spec, DATA, tmp_path / "b", progress=False, workers=3)
    for s in shards.SPLITS:
        assert (tmp_path / "a" / f"{s}.parquet").read_bytes() == (
            tmp_path / "b" / f"{s}.parquet"
        ).read_bytes()


def test_brain_tumor_without_pid_is_named(tmp_path: Path) -> None:
    import h5py

    _brain(tmp_path / "bt", ["1", "2", "3"])
    with h5py.File(tmp_path / "bt" / "2.mat", "r+") as fh:
        del fh["cjdata"]["PID"]
    with pytest.raises(DataError, match=r"2\.mat: field cjdata\.PID"):
        ingest_dataset("bt", {"adapter": "brain_tumor", "path": str(tmp_path / "bt")}, DATA, tmp_path / "o")


def _folder(root: Path, names: list[str]) -> None:
    for name in names:
        img, msk = fixture_sample("dermoscopy", name, (32, 36))
        save(root / "images" / f"{name}.png", img)
        save(root / "masks" / f"{name}.png", msk.astype(np.uint8) * 255)


def test_folder_group_by_regex_and_csv(tmp_path: Path) -> None:
    names = [f"pat{p:02d}_slice{k}" for p in range(7) for k in range(3)]
    _folder(tmp_path / "f", names)
    spec = {"adapter": "folder", "path": str(tmp_path / "f"), "modality": "dermoscopy"}
    ingest_dataset("f", {**spec, "group_by": r"^(pat\d+)_"}, DATA, tmp_path / "re", progress=False)
    by_regex = {r["image_id"]: r["split"] for r in _rows(tmp_path / "re")}
    assert all(len({by_regex[f"pat{p:02d}_slice{k}"] for k in range(3)}) == 1 for p in range(7))
    (tmp_path / "f" / "meta.csv").write_text(
        "file,patient\n" + "".join(f"{n}.png,{n.split('_')[0]}\n" for n in names)
    )
    csv_rule = {"csv": "meta.csv", "image_column": "file", "group_column": "patient"}
    ingest_dataset("f", {**spec, "group_by": csv_rule}, DATA, tmp_path / "csv", progress=False)
    assert {
        r["image_id"]: r["split"] for r in _rows(tmp_path / "csv")
    } == by_regex  # same groups, same splits
    with pytest.raises(DataError, match=r"pat00_slice0\.png: file name does not match"):
        ingest_dataset("f", {**spec, "group_by": r"^(case\d+)"}, DATA, tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match=r"datasets\.f\.group_by.*one capture group"):
        ingest_dataset("f", {**spec, "group_by": r"pat\d+"}, DATA, tmp_path / "x", progress=False)


def test_brain_tumor_pid_from_older_v5_files(tmp_path: Path) -> None:
    from scipy.io import savemat

    img, msk = fixture_sample("mri", "v5", (20, 24))
    cj = {"image": img.astype(np.int16), "tumorMask": msk.astype(np.uint8), "PID": "MR-042"}
    savemat(tmp_path / "7.mat", {"cjdata": cj})
    assert read_brain_tumor_pid(tmp_path / "7.mat") == "MR-042"
    savemat(tmp_path / "8.mat", {"cjdata": {"image": cj["image"], "tumorMask": cj["tumorMask"]}})
    with pytest.raises(DataError, match=r"8\.mat: field cjdata\.PID"):
        read_brain_tumor_pid(tmp_path / "8.mat")


def test_group_by_is_for_the_folder_adapter_only(tmp_path: Path) -> None:
    from medfm_robust.data.ingest import check_dataset_paths

    cfg = {"datasets": {"bt": {"adapter": "brain_tumor", "path": str(tmp_path), "group_by": "^(p)"}}}
    with pytest.raises(ConfigError, match=r"datasets\.bt\.group_by"):
        check_dataset_paths(cfg)
