"""Paired strategy comparisons (report/paired.py): bootstrap, Wilcoxon power, false positives, corrections."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from medfm_robust.errors import ConfigError
from medfm_robust.report.aggregate import BootstrapSettings, paired_drops
from medfm_robust.report.paired import adjust_pvalues, paired_statistics, paired_table, wilcoxon_p
from medfm_robust.report.tables import format_cell, long_cells, to_markdown
from medfm_robust.seeding import rng_for

UNIT = ("model", "strategy", "dataset")
#: extra drop per level of each strategy over zero_shot: lora truly degrades more, full does not
EFFECT = {"zero_shot": 0.0, "full": 0.0, "lora": 0.03}


def metrics_frame(
    n_images: int = 30,
    effect: dict[str, float] = EFFECT,
    seed: int = 0,
    datasets: tuple[str, ...] = ("d1",),
    train_seeds: tuple[int, ...] = (),
) -> pd.DataFrame:
    """Segmentation metric rows: per-image clean IoU and susceptibility shared by every strategy (so the
    strategies' drops are strongly correlated across images), plus independent noise per observation."""
    rows = []
    for d in datasets:
        rng = np.random.default_rng([seed, len(d), ord(d[-1])])
        clean = 0.6 + 0.3 * rng.random(n_images)
        sus = rng.gamma(2.0, 0.02, n_images)  # image-level susceptibility, sd ~ 0.03 per level
        for s, eff in effect.items():
            for ts in train_seeds or (None,):
                noise = np.random.default_rng([seed, len(d), ord(d[-1]), len(s), ord(s[0]), ts or 0])
                c = np.clip(clean + 0.01 * noise.standard_normal(n_images), 0, 1)
                for i in range(n_images):
                    rows.append((d, s, ts, f"{d}_{i:03d}", "clean", "clean", 0, c[i]))
                for pert, cat in (("gaussian_noise", "base"), ("hair", "medical")):
                    for lv in (1, 2, 3):
                        p = c - (sus + eff) * lv - 0.02 * noise.standard_normal(n_images)
                        for i in range(n_images):
                            rows.append((d, s, ts, f"{d}_{i:03d}", pert, cat, lv, p[i]))
    df = pd.DataFrame(
        rows,
        columns=["dataset", "strategy", "train_seed", "image_id", "perturbation", "category", "level", "iou"],
    )
    df.insert(0, "model", "tiny_sam")
    df["modality"] = "ct"
    df["ssim"], df["in_band"] = 0.9, True
    df["dice"] = 2 * df["iou"] / (1 + df["iou"])
    df["nsd"], df["hd95"], df["checkpoint_hash"] = df["dice"], 10 * (1 - df["iou"]), "x"
    return df if train_seeds else df.drop(columns="train_seed")


def drops_of(frame: pd.DataFrame) -> pd.DataFrame:
    unit = (*UNIT, "train_seed") if "train_seed" in frame.columns else UNIT
    _, drops = paired_drops(frame, "iou", unit)
    return drops.rename(columns={"drop": "value"})


def _row(res: pd.DataFrame, a: str, b: str, dataset: str = "d1") -> pd.Series:
    sel = res[(res["strategy_a"] == a) & (res["strategy_b"] == b) & (res["dataset"] == dataset)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_true_effect_detected_and_null_pair_not():
    res = paired_statistics(drops_of(metrics_frame()), BootstrapSettings(500, 0.95, 0))
    # 3 strategies -> 3 pairs per dataset block, plus the pooled block
    assert len(res) == 6 and set(res["dataset"]) == {"d1", "all"}
    lora = _row(res, "zero_shot", "lora")
    # lora's drop is 0.03 per level larger, i.e. 0.06 averaged over levels 1..3
    assert lora["mean"] == pytest.approx(-0.06, abs=0.01)
    assert lora["ci_high"] < 0 and lora["significant"] == "yes" and lora["p_adjusted"] < 1e-6
    null = _row(res, "zero_shot", "full")
    assert null["ci_low"] < 0 < null["ci_high"] and null["significant"] == "" and null["p_adjusted"] > 0.05
    assert null["n_images"] == 30 and null["n"] == 30 * 2 * 3
    # the paired interval is far narrower than the spread of the drops themselves (shared image effects)
    assert lora["ci_high"] - lora["ci_low"] < 0.25 * drops_of(metrics_frame())["value"].std()


def test_power_and_false_positives_over_synthetic_replicates():
    """40 synthetic studies of 20 images: a 0.01/level effect is found in nearly all, the null pair in few."""
    hits, false = 0, 0
    for rep in range(40):
        frame = metrics_frame(20, {"zero_shot": 0.0, "full": 0.0, "lora": 0.01}, seed=100 + rep)
        res = paired_statistics(drops_of(frame), BootstrapSettings(0), "holm", 0.05)
        hits += _row(res, "zero_shot", "lora")["significant"] == "yes"
        false += _row(res, "zero_shot", "full")["significant"] == "yes"
    # measured here: 40/40 and 3/40 (the null pair's nominal rate is 5%)
    assert hits >= 36 and false <= 6, (hits, false)


def test_paired_bootstrap_resamples_the_same_images_for_both_strategies():
    frame = metrics_frame(15, {"zero_shot": 0.0, "lora": 0.02})
    frame = frame[frame["perturbation"].isin(["clean", "hair"]) & frame["level"].isin([0, 2])]
    settings = BootstrapSettings(300, 0.9, 7)
    res = paired_statistics(drops_of(frame), settings)
    row = _row(res, "zero_shot", "lora")
    # by hand: per-image differences, multinomial image counts drawn as in report/aggregate.py
    d = drops_of(frame).pivot_table(index="image_id", columns="strategy", values="value")
    diff = (d["zero_shot"] - d["lora"]).sort_index().to_numpy()
    rng = rng_for("report-bootstrap", "d1", 15, global_seed=7)
    w = rng.multinomial(15, np.full(15, 1 / 15), size=300)
    reps = (w @ diff) / w.sum(axis=1)
    assert row["mean"] == pytest.approx(diff.mean(), rel=1e-12)
    assert row["ci_low"] == pytest.approx(np.quantile(reps, 0.05), rel=1e-9)
    assert row["ci_high"] == pytest.approx(np.quantile(reps, 0.95), rel=1e-9)
    # the test is scipy's Wilcoxon signed-rank on those per-image differences
    assert row["p_value"] == pytest.approx(sps.wilcoxon(diff).pvalue, rel=1e-12)


def test_training_seeds_are_averaged_per_strategy_and_outputs_are_deterministic():
    seeded = metrics_frame(12, train_seeds=(0, 1, 2))
    settings = BootstrapSettings(200, 0.95, 0)
    a = paired_statistics(drops_of(seeded), settings)
    pd.testing.assert_frame_equal(
        a, paired_statistics(drops_of(seeded.sample(frac=1.0, random_state=1)), settings)
    )
    # equal to the same data averaged over seeds beforehand
    keys = ["model", "strategy", "dataset", "image_id", "perturbation", "category", "level"]
    pre = drops_of(seeded).groupby(keys)["value"].mean().reset_index()
    pd.testing.assert_frame_equal(a, paired_statistics(pre, settings))


def test_too_few_images_no_interval_no_test_and_pooled_rows():
    frame = metrics_frame(6, datasets=("d1", "d2"))
    table = paired_table(drops_of(frame), BootstrapSettings(100), "IoU", min_images=10)
    table = replace(table, min_images=10)
    wide = table.wide()
    per_ds = wide[wide["dataset"] != "all"]
    assert per_ds["p"].isna().all() and per_ds["IoU drop A - B_ci_low"].isna().all()
    assert (per_ds["IoU drop A - B_n_images"] == 6).all()
    pooled = wide[wide["dataset"] == "all"]  # 12 images over both datasets: tested
    assert pooled["p"].notna().all() and pooled["IoU drop A - B_ci_low"].notna().all()
    md = to_markdown(table)
    assert "[6 images, no CI] n=36" in md and "6 pair(s) had too few images" in md
    assert "Tiny SAM on all datasets: LoRA degrades more than Zero-shot by" in md


def test_no_pairs_gives_an_empty_table():
    frame = metrics_frame(12, {"zero_shot": 0.0})
    table = paired_table(drops_of(frame), BootstrapSettings(0))
    assert table.wide().empty and "0 of 0 tested pairs" in to_markdown(table)
    # numeric cell columns, so the long cells of all tables (read by the figures) stay float
    cells = long_cells([table])
    assert all(pd.api.types.is_float_dtype(cells[c]) for c in ("mean", "ci_low", "ci_high"))


def test_holm_by_hand_and_bh_on_the_benjamini_hochberg_1995_example():
    # Holm: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, max(0.04, 0.06); NaN not counted
    got = adjust_pvalues([0.01, 0.04, np.nan, 0.03, 0.005], "holm")
    np.testing.assert_allclose(got, [0.03, 0.06, np.nan, 0.06, 0.02], rtol=1e-12)
    assert adjust_pvalues([0.5, 0.9], "holm").tolist() == [1.0, 1.0]
    # Benjamini & Hochberg (1995), section 4: 15 p-values, q* = 0.05 rejects the four smallest
    p = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240, 0.4262, 0.5719,
         0.6528, 0.7590, 1.0000]  # fmt: skip
    bh = adjust_pvalues(p, "bh")
    assert (bh < 0.05).sum() == 4 and (bh[:4] < 0.05).all()
    # by hand: min over j >= i of p_(j) * m / j
    m = len(p)
    hand = [min(p[j] * m / (j + 1) for j in range(i, m)) for i in range(m)]
    np.testing.assert_allclose(bh, np.minimum(hand, 1.0), rtol=1e-12)
    # Holm on the same example rejects only the three smallest (0.0019 * 13 = 0.0247; 0.0095 * 12 > 0.05)
    assert (adjust_pvalues(p, "holm") < 0.05).sum() == 3
    with pytest.raises(ConfigError, match="paired_correction"):
        adjust_pvalues(p, "bonferroni")


def test_wilcoxon_edge_cases_and_cell_text():
    assert wilcoxon_p(np.zeros(12)) == (0.0, 1.0)
    assert all(np.isnan(wilcoxon_p(np.array([]))))
    # exact two-sided p of n = 10 all-positive differences: 2 / 2**10
    assert wilcoxon_p(np.arange(1, 11) / 100)[1] == pytest.approx(2 / 2**10)
    assert format_cell(0.5, 0.4, 0.6, 24, too_few_images=4) == "0.500 [4 images, no CI] n=24"
