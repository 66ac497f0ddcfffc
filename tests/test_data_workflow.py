"""The data stage inside Snakemake: dry runs of both configs, the missing-folder error, a tiny real run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from medfm_robust.data.fixtures import build_fixture_resources

pytestmark = pytest.mark.workflow

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def _snakemake(repo: Path, workdir: Path, configfile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        SNAKEMAKE,
        "-s",
        str(repo / "Snakefile"),
        "--configfile",
        str(configfile),
        "--directory",
        str(workdir),
    ]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600)


def test_dry_run_default_config(repo: Path, tmp_path: Path) -> None:
    res = _snakemake(repo, tmp_path, repo / "config" / "config.yaml", "-n")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "data_ingest" in out and "results/data/demo_ct/test.parquet" in out


def test_dry_run_paper_config_on_fixture_resources(repo: Path, tmp_path: Path) -> None:
    build_fixture_resources(tmp_path / "resources")
    res = _snakemake(repo, tmp_path, repo / "config" / "paper.yaml", "-n")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    for name in ("isic2016", "kvasir_seg", "brain_tumor", "glaucoma_disc", "glaucoma_cup"):
        assert f"results/data/{name}/train.parquet" in out
    assert "results/data/busi/" not in out  # BUSI is not in Table 1 (config/paper_full.yaml has it)


def test_missing_dataset_folder_stops_before_any_job(repo: Path, tmp_path: Path) -> None:
    res = _snakemake(repo, tmp_path, repo / "config" / "paper.yaml", "-n")
    assert res.returncode != 0
    err = res.stdout + res.stderr
    assert "datasets.isic2016.path" in err and "resources/datasets/ISIC2016" in err
    assert "Job stats" not in err  # stopped while parsing, before the DAG and any job


def test_data_rule_runs_and_writes_shards(repo: Path, tmp_path: Path) -> None:
    build_fixture_resources(tmp_path / "resources", n=3, with_models=False)
    # the CI config (kept valid for every stage) plus a real-layout dataset from the fixture
    cfg = yaml.safe_load((repo / "tests" / "config" / "ci.yaml").read_text())
    cfg["data"]["image_size"] = 64
    cfg["datasets"]["kvasir_seg"] = {"adapter": "kvasir_seg", "path": "resources/datasets/Kvasir-SEG"}
    demo = sorted(d for d, s in cfg["datasets"].items() if s["adapter"] == "demo")[0]
    expected = {demo: cfg["datasets"][demo].get("n_images") or 48, "kvasir_seg": 3}
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    targets = [f"results/data/{d}/ingest_report.json" for d in expected]
    res = _snakemake(repo, tmp_path, cfgfile, "-c2", *targets)
    assert res.returncode == 0, res.stderr[-3000:]
    for d, n_expected in expected.items():
        n = sum(
            pq.read_metadata(tmp_path / "results" / "data" / d / f"{s}.parquet").num_rows
            for s in ("train", "val", "test")
        )
        assert n == n_expected
        assert (tmp_path / "logs" / "data_ingest" / f"{d}.log").is_file()
