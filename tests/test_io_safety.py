"""Byte-identical outputs, honest image reading, size limits and atomic writers that clean up after kills."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medfm_robust.errors import DataError
from medfm_robust.io import (
    atomic_path,
    check_outputs,
    decode_png,
    encode_png,
    read_image,
    remove_stale_temporaries,
    write_image,
    write_images,
    write_parquet_atomic,
)
from medfm_robust.png import _png_chunk
from medfm_robust.vlm.cache import pixel_hash

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Writes one perturbed shard (3 RGB images x rotation x 5 levels: black corners, long zero runs) to argv[1];
# argv[2] bytes of random data are compressed first, so heap and stack hold other leftovers in each process.
SHARD_SCRIPT = """
import sys, zlib
import numpy as np, pandas as pd
from medfm_robust.io import encode_png
from medfm_robust.boxes import box_from_mask
from medfm_robust.perturb.table import perturb_table, write_perturbed_shard
zlib.compress(np.random.default_rng().integers(0, 256, int(sys.argv[2]), dtype=np.uint8).tobytes(), 1)
encode_png(np.random.default_rng().integers(0, 256, (97, 131, 3), dtype=np.uint8))
rows = []
for i in range(3):
    rng = np.random.default_rng(i)
    img = np.clip(rng.normal(128, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8); mask[20:40, 16:50] = 255
    rows.append({"image_id": f"img{i}", "dataset": "toy", "modality": "dermoscopy", "split": "test",
                 "image_png": encode_png(img), "mask_png": encode_png(mask), "box": box_from_mask(mask)})
write_perturbed_shard(sys.argv[1], perturb_table(pd.DataFrame(rows), "rotation", progress=False))
"""


def _run(args: list[str], env_extra: dict[str, str]) -> None:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **env_extra}
    subprocess.run([sys.executable, "-c", SHARD_SCRIPT, *args], check=True, env=env, timeout=120)


def test_same_shard_written_by_two_processes_is_byte_identical(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "rotation.parquet", tmp_path / "b" / "rotation.parquet"
    _run([str(a), "300000"], {"PYTHONHASHSEED": "1"})
    _run([str(b), "7"], {"PYTHONHASHSEED": "2", "MALLOC_PERTURB_": "165"})  # malloc fills fresh memory
    assert a.read_bytes() == b.read_bytes()


def test_png_bytes_are_pinned() -> None:
    """The encoder's bytes are a function of the pixels only (libdeflate level 1, "Up" filter); this hash
    holds on every machine and run, so any change of encoder, level or library version shows here."""
    rng = np.random.default_rng(7)
    img = np.clip(rng.normal(120, 30, (48, 40, 3)), 0, 255).astype(np.uint8)
    img[:10] = 0  # runs of zeros, as in rotated images
    png = encode_png(img)
    assert hashlib.sha256(png).hexdigest()[:16] == "9157db0b15ffdc89"
    np.testing.assert_array_equal(decode_png(png), img)
    gray16 = rng.integers(0, 65536, (17, 9), dtype=np.uint16)
    np.testing.assert_array_equal(decode_png(encode_png(gray16)), gray16)


def test_api_cache_key_depends_on_pixels_not_encoding() -> None:
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    ours = encode_png(img)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=9)  # another encoder, same pixels
    other = buf.getvalue()
    assert other != ours
    assert pixel_hash(other) == pixel_hash(ours)
    img2 = img.copy()
    img2[0, 0, 0] ^= 1
    assert pixel_hash(encode_png(img2)) != pixel_hash(ours)
    assert pixel_hash(encode_png(img[:, :, 0])) != pixel_hash(encode_png(img[:, :, :1].repeat(3, axis=2)))


def _png_file(path: Path, header_bits: int, colour_type: int, w: int = 4, h: int = 3) -> None:
    """A valid PNG of ``w x h`` zeros with the given bit depth and colour type (written by hand)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = b"\x00" + bytes(w * channels * header_bits // 8)
    ihdr = np.array([w, h], ">u4").tobytes() + bytes([header_bits, colour_type, 0, 0, 0])
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(row * h))
    path.write_bytes(data + _png_chunk(b"IEND", b""))


def test_16_bit_colour_is_refused_not_truncated(tmp_path: Path) -> None:
    _png_file(tmp_path / "rgb16.png", 16, 2)
    _png_file(tmp_path / "rgba16.png", 16, 6)
    for name in ("rgb16.png", "rgba16.png"):
        with pytest.raises(DataError, match=rf"{name}: 16-bit colour images are not supported"):
            read_image(tmp_path / name)
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "t16.tif")  # 8-bit TIFF is fine
    assert read_image(tmp_path / "t16.tif").dtype == np.uint8
    _png_file(tmp_path / "gray16.png", 16, 0)
    assert read_image(tmp_path / "gray16.png").dtype == np.uint16


def test_alpha_is_refused_unless_fully_opaque(tmp_path: Path) -> None:
    rgba = np.full((6, 7, 4), 200, np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(read_image(tmp_path / "opaque.png"), rgba[..., :3])
    rgba[2, 3, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "holes.png")
    with pytest.raises(DataError, match=r"holes\.png: has an alpha channel with 1 transparent pixels"):
        read_image(tmp_path / "holes.png")
    la = np.full((5, 5, 2), 9, np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    with pytest.raises(DataError, match=r"la\.png: has an alpha channel"):
        read_image(tmp_path / "la.png")
    pal = Image.fromarray(np.zeros((4, 4), np.uint8), mode="P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    with pytest.raises(DataError, match=r"pal\.png: has an alpha channel"):
        read_image(tmp_path / "pal.png")


def test_size_limit_names_file_and_limit(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "big.png")
    message = r"big\.png: image is 40 x 30 = 1,200 pixels, above the limit of 1,000 \(config key"
    with pytest.raises(DataError, match=message):
        read_image(tmp_path / "big.png", max_pixels=1000)
    assert read_image(tmp_path / "big.png", max_pixels=1200).shape == (30, 40)
    assert read_image(tmp_path / "big.png", max_pixels=None).shape == (30, 40)


def test_output_name_must_match_format(tmp_path: Path) -> None:
    for name in ("out.jpg", "out.JPEG", "out.tif", "out"):
        with pytest.raises(DataError, match="output is written as PNG"):
            write_image(tmp_path / name, np.zeros((4, 4), np.uint8))
        assert not (tmp_path / name).exists()
    write_image(tmp_path / "ok.PNG", np.zeros((4, 4), np.uint8))


def test_check_outputs_refuses_inputs_links_and_folders(tmp_path: Path) -> None:
    src = tmp_path / "x.png"
    write_image(src, np.zeros((4, 4), np.uint8))
    (tmp_path / "link.png").symlink_to(src)
    os.link(src, tmp_path / "hard.png")
    for out in (src, tmp_path / "link.png", tmp_path / "hard.png", tmp_path / "sub" / ".." / "x.png"):
        with pytest.raises(DataError, match="refusing to overwrite it"):
            check_outputs([out], [src])
    with pytest.raises(DataError, match="is a folder"):
        check_outputs([tmp_path], [src])
    with pytest.raises(DataError, match=r"cannot create its folder \(.*x\.png is a file\)"):
        check_outputs([src / "o.png"], [])
    with pytest.raises(DataError, match="named twice"):
        check_outputs([tmp_path / "o.png", tmp_path / "." / "o.png"], [])
    check_outputs([tmp_path / "new" / "o.png"], [src])


def test_several_outputs_are_written_all_or_none(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    img = np.zeros((4, 4), np.uint8)
    with pytest.raises(OSError):
        write_images([(tmp_path / "a.png", img), (blocker / "m.png", img)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    write_images([(tmp_path / "a.png", img), (tmp_path / "m.png", img)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "file", "m.png"]


KILL_SCRIPT = """
import os, sys
import pandas as pd
from medfm_robust import io
real = io.atomic_paths
def dying(paths):
    cm = real(paths)
    cm.__enter__()
    os._exit(9)  # as after SIGKILL: no cleanup, the temporary stays
io.atomic_paths = dying
io.write_parquet_atomic(sys.argv[1], pd.DataFrame({"a": [1, 2]}))
"""


def test_killed_writer_leaves_debris_that_the_next_writer_removes(tmp_path: Path) -> None:
    target = tmp_path / "out" / "table.parquet"
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(target)], env=env, timeout=120)
    assert proc.returncode == 9
    debris = list(target.parent.glob(".table.parquet.*.tmp"))
    assert len(debris) == 1 and not target.exists()
    (target.parent / ".other.parquet.h.1.ab.tmp").write_text("")  # another target's: not touched
    write_parquet_atomic(target, pd.DataFrame({"a": [1, 2]}))
    assert target.is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == [".other.parquet.h.1.ab.tmp", "table.parquet"]


def test_live_writers_temporaries_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "t.json"
    with atomic_path(target) as tmp:
        tmp.write_text("{}")
        assert remove_stale_temporaries(target) == []  # our own, alive: kept
        assert tmp.exists()
    assert target.read_text() == "{}" and list(tmp_path.iterdir()) == [target]


def test_default_limit_refuses_8000_square_before_decoding(tmp_path: Path) -> None:
    """8000 x 8000 RGB drove one perturbation past 12 GB; the default limit refuses it from the header."""
    ihdr = np.array([8000, 8000], ">u4").tobytes() + bytes([8, 2, 0, 0, 0])
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"")
    (tmp_path / "huge.png").write_bytes(head + _png_chunk(b"IEND", b""))  # no pixel data: never decoded
    with pytest.raises(DataError, match=r"huge\.png: image is 8000 x 8000 = 64,000,000 pixels, above the"):
        read_image(tmp_path / "huge.png")


def test_read_parquet_checked_names_the_file_and_the_fault(tmp_path: Path) -> None:
    import pandas as pd

    from medfm_robust.io import read_parquet_checked

    good = tmp_path / "good.parquet"
    write_parquet_atomic(good, pd.DataFrame({"image_id": ["a", "b"], "level": [1, 2]}))
    got = read_parquet_checked(good, ["image_id"], kind="shard", columns=["level"])
    assert list(got.columns) == ["level"] and got["level"].tolist() == [1, 2]
    with pytest.raises(DataError, match=r"missing\.parquet: shard not found"):
        read_parquet_checked(tmp_path / "missing.parquet", kind="shard")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"junk\.parquet: cannot read VLM sample table"):
        read_parquet_checked(tmp_path / "junk.parquet", kind="VLM sample table")
    with pytest.raises(DataError, match=r"good\.parquet: shard lacks column\(s\) mask_png, box$"):
        read_parquet_checked(good, ["image_id", "mask_png", "box"], kind="shard")
