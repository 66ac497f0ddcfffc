"""Every CLI error is one line naming the file; inputs are never overwritten; outputs are all-or-nothing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from medfm_robust.cli import main
from medfm_robust.io import read_image, write_image


def _image(path: Path, size: int = 32, rgb: bool = True) -> Path:
    rng = np.random.default_rng(size)
    write_image(path, rng.integers(0, 256, (size, size, 3) if rgb else (size, size), dtype=np.uint8))
    return path


def _fails(capsys, argv: list[str], *fragments: str) -> str:  # type: ignore[no-untyped-def]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medfm-robust: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, (f, err)
    return err


ROT = ["--type", "rotation", "--level", "3"]


def test_perturb_never_overwrites_its_inputs(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    x = _image(tmp_path / "x.png")
    mask = tmp_path / "m.png"
    write_image(mask, np.zeros((32, 32), np.uint8))
    before = x.read_bytes(), mask.read_bytes()
    (tmp_path / "link.png").symlink_to(x)
    os.link(x, tmp_path / "hard.png")
    sub = tmp_path / "sub"
    sub.mkdir()
    cases = [
        [str(x), str(x)],
        [str(x), str(tmp_path / "link.png")],
        [str(tmp_path / "link.png"), str(x)],
        [str(x), str(tmp_path / "hard.png")],
        [str(x), str(sub / ".." / "x.png")],
        [str(x), str(tmp_path / "o.png"), "--mask", str(mask), "--mask-out", str(mask)],
        [str(x), str(mask), "--mask", str(mask), "--mask-out", str(tmp_path / "mo.png")],
    ]
    for args in cases:
        _fails(capsys, ["perturb", *args, *ROT], "refusing to overwrite it")
    _fails(capsys, ["perturb", str(x), str(tmp_path / "o.png"), "--mask", str(mask), "--mask-out",
                    str(tmp_path / "o.png"), *ROT], "named twice")
    assert (x.read_bytes(), mask.read_bytes()) == before
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "mo.png").exists()


def test_unwritable_mask_out_leaves_no_half_result(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    x = _image(tmp_path / "x.png")
    mask = tmp_path / "m.png"
    write_image(mask, np.zeros((32, 32), np.uint8))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    _fails(capsys, ["perturb", str(x), str(tmp_path / "o.png"), "--mask", str(mask), "--mask-out",
                    str(blocker / "m.png"), *ROT], "m.png", "is a file")
    _fails(capsys, ["perturb", str(x), str(tmp_path / "o.png"), "--mask", str(mask), "--mask-out",
                    "/proc/medfm_test/m.png", *ROT], "/proc")  # the kernel refuses the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "m.png", "x.png"]


@pytest.mark.parametrize(
    ("output", "fragment"),
    [
        ("o.jpg", "o.jpg: output is written as PNG; name it '*.png'"),
        ("o.tiff", "o.tiff: output is written as PNG"),
        ("adir.png", "adir.png: is a folder"),
        ("blocker/o.png", "is a file"),
    ],
)
def test_perturb_output_errors_name_the_file(tmp_path: Path, capsys, output, fragment) -> None:  # type: ignore[no-untyped-def]
    x = _image(tmp_path / "x.png")
    (tmp_path / "adir.png").mkdir()
    (tmp_path / "blocker").write_text("")
    _fails(capsys, ["perturb", str(x), str(tmp_path / output), *ROT], fragment)


def test_os_errors_are_one_line_naming_the_file(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    x = _image(tmp_path / "x.png")
    _fails(capsys, ["perturb", str(x), "/proc/self/medfm.png", *ROT], "/proc/self")
    _fails(capsys, ["demo-data", "--modality", "xray", "-n", "1", "--out", str(x)], str(x))


@pytest.mark.parametrize("size", [1, 3, 10])
def test_tiny_images_name_the_file(tmp_path: Path, capsys, size: int) -> None:  # type: ignore[no-untyped-def]
    x = _image(tmp_path / f"tiny{size}.png", size)
    for kind in ("rotation", "gaussian_noise"):
        _fails(capsys, ["perturb", str(x), str(tmp_path / "o.png"), "--type", kind, "--level", "2"],
               f"tiny{size}.png: ", "at least 11 x 11")
    _fails(capsys, ["ssim", str(x), str(x)], f"tiny{size}.png: ")
    assert not (tmp_path / "o.png").exists()


def test_size_guard_on_the_command_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    x = _image(tmp_path / "x.png", 40)
    _fails(capsys, ["perturb", str(x), str(tmp_path / "o.png"), *ROT, "--max-pixels", "1000"],
           "x.png: image is 40 x 40 = 1,600 pixels, above the limit of 1,000")
    _fails(capsys, ["ssim", str(x), str(x), "--max-pixels", "1599"], "above the limit of 1,599")
    assert main(["perturb", str(x), str(tmp_path / "o.png"), *ROT, "--max-pixels", "1600"]) == 0
    assert read_image(tmp_path / "o.png").shape == (40, 40, 3)


def test_seg_predict_refuses_to_overwrite_its_input(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    x = _image(tmp_path / "x.png")
    before = x.read_bytes()
    box = ["--box", "2", "2", "20", "20"]
    _fails(capsys, ["seg-predict", "tiny_sam", str(x), str(x), *box], "refusing to overwrite it")
    _fails(capsys, ["seg-predict", "tiny_sam", str(x), str(tmp_path / "m.jpg"), *box], "m.jpg: output is")
    assert x.read_bytes() == before


@pytest.mark.parametrize("argv", [["perturbations", "--json"], ["perturbations"], ["seg-models"]])
def test_broken_pipe_exits_quietly(monkeypatch, capsys, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    """``medfm-robust perturbations --json | head``: the reader is gone; no traceback, exit 141."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    out = open(write_end, "w", buffering=1 << 20)  # noqa: SIM115 (closed below)
    monkeypatch.setattr(sys, "stdout", out)
    try:
        assert main(argv) == 141
    finally:
        out.close()
    assert capsys.readouterr().err == ""


def test_seg_eval_refuses_to_overwrite_its_shards(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    shard = tmp_path / "clean.parquet"
    shard.write_bytes(b"not read: refused before")
    args = ["seg-eval", "--model", "tiny_sam", "--dataset", "d", "--out-dir", str(tmp_path)]
    _fails(capsys, [*args, "--test", str(shard)], "clean.parquet: output is the input file")
    _fails(capsys, [*args, "--test", "t.parquet", "--shard", f"noise={tmp_path / 'noise.parquet'}"],
           "noise.parquet: output is the input file")
    _fails(capsys, [*args, "--test", "t.parquet", "--attacks", "--finetuned", str(tmp_path / "pgd.parquet")],
           "pgd.parquet: output is the input file")
    assert shard.read_bytes() == b"not read: refused before"
