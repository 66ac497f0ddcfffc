"""Changes inside source folders re-run exactly the jobs that read them (listing manifest as a param)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_workflow_support import SNAKEMAKE, env_for, parse_dryrun

from medfm_robust.data.fixtures import build_fixture_resources
from medfm_robust.manifest import listing, source_manifest, source_paths

REPO = Path(__file__).resolve().parents[1]


def test_manifest_sees_every_kind_of_change(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "images" / "sub").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(b"aaaa")
    (root / "images" / "sub" / "b.png").write_bytes(b"bb")
    (root / ".DS_Store").write_bytes(b"x")
    assert [name for name, _, _ in listing(root)] == ["images/a.png", "images/sub/b.png"]
    seen = {source_manifest(root)}
    assert source_manifest(root) in seen  # stable
    b = root / "images" / "sub" / "b.png"
    st = b.stat()
    b.write_bytes(b"cc")  # same size, new content
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))  # older mtime: unseen by make
    seen.add(source_manifest(root))
    (root / "images" / "sub" / "new.png").write_bytes(b"")  # added in a sub-folder
    seen.add(source_manifest(root))
    (root / "images" / "a.png").unlink()  # removed
    seen.add(source_manifest(root))
    (root / "images" / "sub" / "new.png").rename(root / "images" / "sub" / "renamed.png")
    seen.add(source_manifest(root))
    assert len(seen) == 5
    (root / ".DS_Store").write_bytes(b"changed")  # hidden files are not data
    assert source_manifest(root) in seen
    assert source_manifest(tmp_path / "nope") != source_manifest(tmp_path / "nope2")


def test_source_paths_leave_out_workflow_outputs() -> None:
    inputs = {"samples": "results/vlm/data/x.parquet", "model": "resources/vlm/m", "ckpt": ["/abs/c.pth"],
              "none": []}
    assert source_paths(inputs, None, "") == ["/abs/c.pth", "resources/vlm/m"]


def test_manifest_of_a_10000_file_tree_is_fast(tmp_path: Path) -> None:
    root = tmp_path / "big"
    for i in range(10_000):
        sub = root / f"{i // 1000:02d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        (sub / f"img_{i:05d}.png").write_bytes(b"")
    t0 = time.perf_counter()
    source_manifest(root)
    seconds = time.perf_counter() - t0
    print(f"listing manifest of 10,000 files: {seconds * 1000:.0f} ms")
    assert len(listing(root)) == 10_000


def _run(work: Path, *args: str) -> str:
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--configfile", "cfg.yaml", "--directory", str(work)]
    res = subprocess.run([*cmd, *args], cwd=work, env=env_for(REPO), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return res.stdout + res.stderr


@pytest.mark.workflow
def test_folder_changes_rerun_exactly_their_dataset(tmp_path: Path) -> None:
    res = build_fixture_resources(tmp_path / "resources", n=3, with_models=False)
    cfg = yaml.safe_load((REPO / "tests" / "config" / "ci.yaml").read_text())
    cfg["data"]["image_size"] = 32
    cfg["datasets"]["kvasir_seg"] = {"adapter": "kvasir_seg", "path": "resources/datasets/Kvasir-SEG"}
    cfg["datasets"]["busi"] = {"adapter": "busi", "path": "resources/datasets/BUSI"}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    targets = ["results/data/kvasir_seg/ingest_report.json", "results/data/busi/ingest_report.json"]
    _run(tmp_path, "-c1", *targets)

    def planned() -> set[tuple[str, str]]:
        jobs = parse_dryrun(_run(tmp_path, "-n", *targets))
        return {(j.rule, dict(j.wildcards).get("dataset", "")) for j in jobs}

    assert planned() == set()
    kvasir = ("data_ingest", "kvasir_seg")
    images = sorted((res / "datasets" / "Kvasir-SEG").rglob("*.jpg"))
    img = images[0]
    backup = tmp_path / "backup.jpg"
    shutil.copy2(img, backup)
    # edited in place: same size, other bytes, an mtime older than every output
    data = bytearray(img.read_bytes())
    data[-3] ^= 0xFF
    img.write_bytes(bytes(data))
    os.utime(img, ns=(backup.stat().st_atime_ns, backup.stat().st_mtime_ns - 10**9))
    assert planned() == {kvasir}
    shutil.copy2(backup, img)  # restored exactly (bytes and mtime): nothing to do again
    assert planned() == set()
    shutil.copy2(backup, img.with_name("added_" + img.name))  # added in Kvasir-SEG
    victim = sorted(p for p in (res / "datasets" / "BUSI").rglob("*") if p.is_file())[-1]
    victim.unlink()  # removed from BUSI
    assert planned() == {kvasir, ("data_ingest", "busi")}
