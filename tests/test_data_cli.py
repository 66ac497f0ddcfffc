"""The data stage's ``medfm-robust`` sub-commands."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import yaml

from medfm_robust.cli import main


def test_ingest_command_writes_shards(tmp_path: Path, capsys) -> None:
    cfg = {
        "data": {"image_size": 32, "splits": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "datasets": {"demo_fundus": {"adapter": "demo", "modality": "fundus", "n_images": 4}},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["ingest", "--config", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "demo_fundus" in capsys.readouterr().out
    rows = sum(
        pq.read_metadata(tmp_path / "out" / "demo_fundus" / f"{s}.parquet").num_rows
        for s in ("train", "val", "test")
    )
    assert rows == 4


def test_missing_folder_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    cfg = {"datasets": {"kv": {"adapter": "kvasir_seg", "path": str(tmp_path / "absent")}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["ingest", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "datasets.kv.path" in err and "absent" in err and err.count("\n") == 1


def test_demo_data_and_fixture_commands(tmp_path: Path) -> None:
    assert main(["demo-data", "--modality", "xray", "-n", "2", "--out", str(tmp_path / "png")]) == 0
    assert sorted(p.name for p in (tmp_path / "png" / "xray").iterdir()) == [
        "xray_0000.png",
        "xray_0000_mask.png",
        "xray_0001.png",
        "xray_0001_mask.png",
    ]
    assert main(["fixture-resources", str(tmp_path / "res"), "-n", "2"]) == 0
    assert (
        tmp_path / "res" / "datasets" / "BUSI" / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png"
    ).is_file()
    assert (tmp_path / "res" / "checkpoints" / "medsam_vit_b.pth").is_file()
