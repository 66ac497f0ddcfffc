"""Normalised and clinical scores (report/scores.py) and honest cells, on hand-computable metric frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_report import PARAMS
from test_report_paired import metrics_frame

from medfm_robust.io import write_parquet_atomic
from medfm_robust.report.aggregate import BootstrapSettings, paired_drops
from medfm_robust.report.build import run_tables
from medfm_robust.report.scores import corruption_errors, statistics_tables

UNIT = ("model", "strategy", "dataset")


def _frame(values: dict[tuple[str, str, int], list[float]], clean: dict[str, list[float]]) -> pd.DataFrame:
    """Rows of model m, dataset d: ``values[(strategy, perturbation, level)]`` = IoU per image."""
    rows = []
    for s, ious in clean.items():
        rows += [(s, f"i{i}", "clean", "clean", 0, v) for i, v in enumerate(ious)]
    for (s, p, lv), ious in values.items():
        rows += [(s, f"i{i}", p, "base", lv, v) for i, v in enumerate(ious)]
    df = pd.DataFrame(rows, columns=["strategy", "image_id", "perturbation", "category", "level", "iou"])
    df.insert(0, "model", "m")
    df.insert(2, "dataset", "d")
    df["modality"], df["ssim"], df["in_band"] = "ct", 0.9, True
    df["dice"] = 2 * df["iou"] / (1 + df["iou"])
    return df


def test_mce_is_the_imagenet_c_ratio_of_error_sums():
    # two types x two levels, two images; errors E = 1 - IoU (mean over the two images)
    frame = _frame(
        {
            ("zero_shot", "a", 1): [0.8, 0.6],  # E 0.3
            ("zero_shot", "a", 2): [0.6, 0.4],  # E 0.5
            ("zero_shot", "b", 1): [0.9, 0.9],  # E 0.1
            ("zero_shot", "b", 2): [0.7, 0.7],  # E 0.3
            ("lora", "a", 1): [0.9, 0.7],  # E 0.2
            ("lora", "a", 2): [0.7, 0.5],  # E 0.4
            ("lora", "b", 1): [0.8, 0.8],  # E 0.2
            ("lora", "b", 2): [0.4, 0.4],  # E 0.6
        },
        {"zero_shot": [1.0, 1.0], "lora": [1.0, 1.0]},
    )
    _, drops = paired_drops(frame, "iou", UNIT)
    ce = corruption_errors(drops, "zero_shot", UNIT, BootstrapSettings(0)).set_index("strategy")
    # Hendrycks & Dietterich (2019): CE_c = sum_s E_sc / sum_s E_sc^ref, mCE = mean_c CE_c
    assert ce.loc["lora", "mce"] == pytest.approx(((0.2 + 0.4) / (0.3 + 0.5) + (0.2 + 0.6) / (0.1 + 0.3)) / 2)
    assert ce.loc["zero_shot", "mce"] == pytest.approx(1.0)
    assert ce.loc["lora", "n"] == 8
    assert corruption_errors(drops, "full", UNIT, BootstrapSettings(0)).empty


def test_relative_drop_failure_rate_and_effects(tmp_path):
    frame = metrics_frame(12, {"zero_shot": 0.0, "full": 0.0, "lora": 0.1})
    path = tmp_path / "m.parquet"
    write_parquet_atomic(path, frame)
    tables = {t.name: t for t in statistics_tables([str(path)], BootstrapSettings(200, 0.95, 0), PARAMS)}
    norm = tables["normalised_scores"].wide().set_index("strategy")
    assert list(norm.index) == ["zero_shot", "full", "lora"]
    np.testing.assert_allclose(norm["relative drop"], norm["IoU drop"] / norm["clean IoU"], rtol=0.02)
    # by hand: share of images whose perturbed Dice < 0.5, each level then type averaged (same images)
    pert = frame[(frame["perturbation"] != "clean") & (frame["strategy"] == "lora")]
    fail = (
        (pert["dice"] < 0.5)
        .groupby([pert["perturbation"], pert["level"]])
        .mean()
        .groupby("perturbation")
        .mean()
    )
    assert norm.loc["lora", "fail perturbed Dice<0.5"] == pytest.approx(fail.mean())
    lo, hi = norm.loc["lora", ["fail perturbed Dice<0.5_ci_low", "fail perturbed Dice<0.5_ci_high"]]
    assert lo <= fail.mean() <= hi and hi > lo
    assert norm.loc["lora", "fail clean Dice<0.5"] == 0.0
    # lora degrades more than the zero-shot reference: more errors; full about as many
    assert norm.loc["zero_shot", "mCE vs zero_shot"] == pytest.approx(1.0)
    assert norm.loc["lora", "mCE vs zero_shot"] > 1.1 and abs(norm.loc["full", "mCE vs zero_shot"] - 1) < 0.05
    eff = tables["dataset_perturbation_effects"].wide().set_index("perturbation")
    assert list(eff.index) == ["gaussian_noise", "all base", "hair", "all medical"]
    assert eff.loc["all base", "d1_n"] == eff.loc["gaussian_noise", "d1_n"]
    assert eff.loc["all base", "d1"] == pytest.approx(eff.loc["gaussian_noise", "d1"])


def test_cells_under_min_cell_n_images_print_n_and_no_interval(tmp_path):
    frame = metrics_frame(8, datasets=("d1", "d2"))
    path = tmp_path / "m.parquet"
    write_parquet_atomic(path, frame)
    params = {**PARAMS, "bootstrap_samples": 50, "min_cell_n": 10}
    run_tables("segmentation", [str(path)], tmp_path / "t", tmp_path / "t/cells.parquet", params)
    t1 = pd.read_csv(tmp_path / "t/table1_segmentation.csv")
    # per dataset: 8 images < 10 -> no interval; averaged over both datasets: 16 images -> interval
    assert t1["d1 dB_ci_low"].isna().all() and (t1["d1 dB_n_images"] == 8).all()
    assert t1["avg dB_ci_low"].notna().all() and (t1["avg dB_n_images"] == 16).all()
    md = (tmp_path / "t/table1_segmentation.md").read_text()
    assert "[8 images, no CI] n=24" in md
    cells = pd.read_parquet(tmp_path / "t/cells.parquet")
    few = cells[cells["n_images"] < 10]
    assert len(few) and few["ci_low"].isna().all()  # the figures draw no error bar either
    for name in ("normalised_scores", "dataset_perturbation_effects", "paired_strategy_differences"):
        assert (tmp_path / f"t/{name}.tex").exists()
    # min_cell_n 0 restores every interval
    run_tables(
        "segmentation", [str(path)], tmp_path / "u", tmp_path / "u/c.parquet", {**params, "min_cell_n": 0}
    )
    assert pd.read_csv(tmp_path / "u/table1_segmentation.csv")["d1 dB_ci_low"].notna().all()
