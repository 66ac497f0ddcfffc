"""The segmentation sub-commands of ``medfm-robust``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_seg_support import write_perturbed_shard, write_test_shard

from medfm_robust.cli import main
from medfm_robust.io import read_image, write_image


def test_seg_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seg-models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["medsam", "sam_med2d", "sam_vit_b", "lite_medsam", "tiny_sam"]
    assert {r["name"]: r["checkpoint_file"] for r in rows}["sam_med2d"] == "sam-med2d_b.pth"


def test_seg_predict_writes_a_mask_and_rejects_bad_boxes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = np.zeros((40, 60), np.uint8)
    img[10:30, 20:45] = 200
    write_image(tmp_path / "in.png", img)

    def predict(box: tuple[int, int, int, int], *extra: str) -> int:
        paths = [str(tmp_path / "in.png"), str(tmp_path / "m.png")]
        return main(["seg-predict", "tiny_sam", *paths, "--box", *map(str, box), *extra])

    assert predict((20, 10, 44, 29)) == 0
    mask = read_image(tmp_path / "m.png")
    assert mask.shape == (40, 60) and set(np.unique(mask)) <= {0, 255}
    assert predict((0, 0, 60, 10)) == 2
    assert "not inside the 60 x 40 image" in capsys.readouterr().err
    assert predict((0, 0, 5, 5), "--checkpoint", str(tmp_path / "none.pth")) == 2
    assert "none.pth: checkpoint file for model 'tiny_sam' not found" in capsys.readouterr().err


def test_seg_predict_reads_raw_16bit_images_by_their_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A raw 16-bit slice (values 0..1275 = 5 x 255, so its 8-bit rendering is exact) gives the mask of that
    rendering: by default by its own min..max (ingestion's ``intensity: none``), or an explicit range."""
    raw = np.zeros((40, 60), np.uint16)
    raw[10:30, 20:45] = 1275
    raw[12:20, 25:30] = 635
    write_image(tmp_path / "raw.png", raw)
    write_image(tmp_path / "u8.png", (raw // 5).astype(np.uint8))

    box = ["--box", "20", "10", "44", "29"]

    def predict(name: str, *extra: str) -> np.ndarray:
        out = tmp_path / f"m_{name}_{len(extra)}.png"
        torch.manual_seed(0)  # the same random tiny SAM for every call (no checkpoint given)
        assert main(["seg-predict", "tiny_sam", str(tmp_path / name), str(out), *box, *extra]) == 0
        return read_image(out)

    ref = predict("u8.png")
    assert np.array_equal(predict("raw.png"), ref)
    assert np.array_equal(predict("raw.png", "--value-range", "0", "1275"), ref)
    bad = ["--value-range", "5", "5"]
    raw_in, out = str(tmp_path / "raw.png"), str(tmp_path / "x.png")
    assert main(["seg-predict", "tiny_sam", raw_in, out, *box, *bad]) == 2
    assert "--value-range of" in capsys.readouterr().err


def test_seg_eval_writes_one_file_per_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_test_shard(tmp_path / "test.parquet", "demo", 2, size=32)
    write_perturbed_shard(tmp_path / "noise.parquet", "demo", "noise", 2, levels=2, size=32)
    args = [
        "seg-eval",
        "--model",
        "tiny_sam",
        "--dataset",
        "demo",
        "--test",
        str(tmp_path / "test.parquet"),
        "--out-dir",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    ]
    assert main([*args, "--shard", f"noise={tmp_path / 'noise.parquet'}"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["clean"] == 2 and counts["noise"] == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clean.parquet", "noise.parquet"]
    assert main([*args, "--shard", "noise"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err


def test_finetune_one_run_prints_peak_memory(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_test_shard(tmp_path / "train.parquet", "demo", 4, size=32)
    write_test_shard(tmp_path / "val.parquet", "demo", 2, size=32)
    out = tmp_path / "runs" / "tiny.safetensors"
    args = [
        "finetune", "--config", str(repo / "config" / "config.yaml"), "--model", "tiny_sam",
        "--dataset", "demo", "--strategy", "dec_only", "--out", str(out), "--checkpoint", "random",
        "--train", str(tmp_path / "train.parquet"), "--val", str(tmp_path / "val.parquet"),
        "--device", "cpu", "--epochs", "1", "--batch-size", "4", "--micro-batch-size", "2",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["peak_memory"] == "rss" and summary["peak_memory_mib"] > 50  # this process: torch + model
    assert summary["micro_batch_size"] == 2 and summary["trainable_params"] > 0
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "tiny.json", "tiny.safetensors", "tiny_curve.png", "tiny_history.csv"
    ]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["settings"]["train"]["micro_batch_size"] == 2 and meta["base_checkpoint"] is None
    # a micro-batch larger than the batch is refused with one line
    assert main([*args[:-1], "8"]) == 2
    assert "micro_batch_size (8) must be between 1 and batch_size (4)" in capsys.readouterr().err
    assert main([*args[:9], "--out", str(tmp_path / "x.pt")]) == 2
    assert "must be a .safetensors file" in capsys.readouterr().err
    # --train-seed: the workflow's finetune.seeds outside the workflow (another seed, other weights)
    seeded = tmp_path / "runs" / "tiny_seed1.safetensors"
    assert main([*args[:9], "--out", str(seeded), *args[11:], "--train-seed", "1"]) == 0
    capsys.readouterr()
    assert json.loads(seeded.with_suffix(".json").read_text())["train_seed"] == 1 and meta["train_seed"] == 0
    assert seeded.read_bytes() != out.read_bytes()
