"""The paths module owns every output path (issue 16 requirement 2)."""

from __future__ import annotations

import re
from pathlib import Path

from medfm_robust import paths

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_rule_patterns_and_arguments_fill_them():
    pattern = paths.seg_metrics()
    assert pattern == "results/metrics/segmentation/{model}/{strategy}/seed{seed}/{dataset}.parquet"
    concrete = paths.seg_metrics("tiny_sam", "lora", 2, "demo_ct")
    assert concrete == pattern.format(model="tiny_sam", strategy="lora", seed=2, dataset="demo_ct")
    run = paths.run_outputs("m", "d", "lora", 1)
    assert (
        run["checkpoint"]
        == paths.checkpoint("m", "d", "lora", 1)
        == "results/checkpoints/m/d/lora/seed1.safetensors"
    )
    assert run["sidecar"] == paths.checkpoint_sidecar("m", "d", "lora", 1)
    assert set(run) == set(paths.RUN_SUFFIXES)
    assert paths.vlm_metrics() == "results/metrics/vlm/{vlm_model}/{task}/{vlm_dataset}/{name}.parquet"
    assert paths.data_shard(split="test") == "results/data/{dataset}/test.parquet"


def test_no_results_literal_outside_the_paths_module():
    """Only paths.py (and the rule files, which call it) may spell the output root."""
    found = []
    for folder in ("src", "workflow", "benchmarks"):
        for f in sorted((REPO / folder).rglob("*.py")):
            rel = str(f.relative_to(REPO))
            if rel == "src/medfm_robust/paths.py":
                continue
            found += [
                f"{rel}:{i}" for i, line in enumerate(f.read_text().splitlines(), 1) if "results/" in line
            ]
    assert not found, found
    rules = "\n".join(p.read_text() for p in sorted((REPO / "rules").glob("*.smk")))
    assert not re.search(r"results/", rules), "rule files take their paths from medfm_robust.paths"
