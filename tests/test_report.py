"""Aggregation, tables, figures and report targets, on synthetic metric files with the contract columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report_synth import seg_frame, write_seg_tree, write_vlm_tree

from medfm_robust import paths
from medfm_robust.config import default_config
from medfm_robust.errors import DataError
from medfm_robust.io import write_json_atomic, write_parquet_atomic
from medfm_robust.report import palette
from medfm_robust.report.aggregate import BootstrapSettings, hierarchical_mean, paired_drops
from medfm_robust.report.build import SEG_TABLES, read_sidecars, run_tables
from medfm_robust.report.figures import SEG_PANELS, draw_figures, vlm_panel_names
from medfm_robust.report.tables import Table, format_cell, to_latex, to_markdown
from medfm_robust.report.targets import ReportTargets

UNIT = ("model", "strategy", "dataset")
PARAMS = {
    **default_config()["report"],  # the schema's defaults, as the workflow passes them
    "bootstrap_samples": 200,
    "ci": 0.95,
    "seed": 0,
    "segmentation_metric": "iou",
    "top_k": 15,
    "in_band_only": False,
    "vlm_metrics": {"vqa": "correct", "caption": "rouge_l", "grounding": "iou"},
}


def _obs(rows):
    return pd.DataFrame(
        rows, columns=["model", "strategy", "dataset", "image_id", "perturbation", "level", "value"]
    )


def test_hierarchy_weights_levels_types_and_datasets_equally():
    # dataset A: type t1 has 2 images at level 1 and 1 image at level 2; type t2 one image.
    # dataset B: one value. Pooled mean would weight A's rows 4:1; the hierarchy does not.
    obs = _obs(
        [
            ("m", "s", "A", "a1", "t1", 1, 0.1),
            ("m", "s", "A", "a2", "t1", 1, 0.3),
            ("m", "s", "A", "a1", "t1", 2, 0.6),
            ("m", "s", "A", "a1", "t2", 1, 1.0),
            ("m", "s", "B", "b1", "t1", 1, 0.0),
        ]
    )
    off = BootstrapSettings(samples=0)
    by_ds = hierarchical_mean(obs, ["dataset"], UNIT, ["dataset"], off).set_index("dataset")
    t1 = ((0.1 + 0.3) / 2 + 0.6) / 2  # level means, then mean over levels
    assert by_ds.loc["A", "mean"] == pytest.approx((t1 + 1.0) / 2)
    assert by_ds.loc["A", "n"] == 4 and by_ds.loc["A", "n_images"] == 2
    top = hierarchical_mean(obs, ["strategy"], UNIT, ["dataset"], off)
    assert top["mean"].iloc[0] == pytest.approx(((t1 + 1.0) / 2 + 0.0) / 2)
    assert top["n"].iloc[0] == 5 and top["n_runs"].iloc[0] == 2
    assert np.isnan(top["ci_low"].iloc[0])
    per_level = hierarchical_mean(obs, ["level"], UNIT, ["dataset"], off).set_index("level")
    # level 1: dataset A = mean over types (0.2, 1.0), dataset B = 0.0, then mean over datasets
    assert per_level.loc[1, "mean"] == pytest.approx(((0.2 + 1.0) / 2 + 0.0) / 2)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    frame = pd.concat(
        [
            seg_frame("m", "full", "d1", "clean", n_images=12),
            seg_frame("m", "full", "d1", "gaussian_noise", n_images=12),
        ]
    )
    _clean, drops = paired_drops(frame, "iou", UNIT)
    drops = drops.rename(columns={"drop": "value"})
    a = hierarchical_mean(drops, ["strategy"], UNIT, ["dataset"], BootstrapSettings(300, 0.95, 1))
    b = hierarchical_mean(drops, ["strategy"], UNIT, ["dataset"], BootstrapSettings(300, 0.95, 1))
    c = hierarchical_mean(drops, ["strategy"], UNIT, ["dataset"], BootstrapSettings(300, 0.95, 2))
    pd.testing.assert_frame_equal(a, b)
    assert (a["ci_low"].iloc[0], a["ci_high"].iloc[0]) != (c["ci_low"].iloc[0], c["ci_high"].iloc[0])
    assert a["ci_low"].iloc[0] < a["mean"].iloc[0] < a["ci_high"].iloc[0]
    # a narrower confidence level gives a narrower interval
    n = hierarchical_mean(drops, ["strategy"], UNIT, ["dataset"], BootstrapSettings(300, 0.5, 1))
    assert n["ci_high"].iloc[0] - n["ci_low"].iloc[0] < a["ci_high"].iloc[0] - a["ci_low"].iloc[0]
    # row order does not matter
    shuffled = drops.sample(frac=1.0, random_state=3)
    pd.testing.assert_frame_equal(
        a, hierarchical_mean(shuffled, ["strategy"], UNIT, ["dataset"], BootstrapSettings(300, 0.95, 1))
    )


def test_paired_drops_need_the_clean_row_of_the_same_image():
    frame = pd.concat(
        [seg_frame("m", "full", "d1", "clean", n_images=3), seg_frame("m", "full", "d1", "hair", n_images=4)]
    )
    with pytest.raises(DataError, match="without a clean row"):
        paired_drops(frame, "iou", UNIT, source="x.parquet")
    ok = pd.concat(
        [seg_frame("m", "full", "d1", "clean", n_images=4), seg_frame("m", "full", "d1", "hair", 4)]
    )
    clean, drops = paired_drops(ok, "iou", UNIT)
    assert len(clean) == 4 and len(drops) == 12
    np.testing.assert_allclose(drops["drop"], drops["clean"] - drops["perturbed"])
    _, banded = paired_drops(ok, "iou", UNIT, in_band_only=True)
    n_in = int(ok.loc[ok["perturbation"] != "clean", "in_band"].sum())
    assert banded["drop"].notna().sum() == n_in and (banded["excluded"] == "out_of_band").sum() == 12 - n_in


def test_cells_count_the_outputs_left_out_as_out_of_band_or_unreachable():
    ok = pd.concat(
        [seg_frame("m", "full", "d1", "clean", n_images=4), seg_frame("m", "full", "d1", "hair", 4)]
    )
    pert = ok["perturbation"] != "clean"
    ok.loc[pert, "in_band"] = [True, False, False, True] * 3
    ok["reachable"] = True
    ok.loc[pert & ~ok["in_band"].astype(bool), "reachable"] = [False, True] * 3  # 3 unreachable, 3 missed
    _, drops = paired_drops(ok, "iou", UNIT, in_band_only=True)
    cell = hierarchical_mean(
        drops.rename(columns={"drop": "value"}),
        ["strategy"],
        UNIT,
        ["dataset"],
        BootstrapSettings(0, 0.95, 0),
    )
    assert cell[["n", "n_out_of_band", "n_unreachable"]].iloc[0].tolist() == [6, 3, 3]
    assert (
        format_cell(0.1, np.nan, np.nan, 6, 3, out_of_band=3, unreachable=3)
        == "0.100 n=6 (-3 out of band, -3 unreachable)"
    )


def test_bad_metric_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.parquet"
    write_parquet_atomic(bad, seg_frame("m", "s", "d", "clean").drop(columns=["iou"]))
    with pytest.raises(DataError, match=r"bad\.parquet.*iou"):
        run_tables("segmentation", [str(bad)], tmp_path / "t", tmp_path / "t/c.parquet", PARAMS)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet"):
        run_tables("segmentation", [str(junk)], tmp_path / "t", tmp_path / "t/c.parquet", PARAMS)


def test_sidecar_names_its_run(tmp_path):
    side = tmp_path / "tiny_sam" / "d1" / "lora" / "seed0.json"
    write_json_atomic(side, {"model": "tiny_sam", "strategy": "lora", "trainable_params": 5})
    with pytest.raises(DataError, match=r"lora/seed0\.json.*dataset"):
        read_sidecars([str(side)])
    write_json_atomic(side, {"model": "tiny_sam", "dataset": "d1", "strategy": "lora"})
    with pytest.raises(DataError, match="trainable"):
        read_sidecars([str(side)])


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    metrics, sidecars = write_seg_tree(root, models=("tiny_sam", "lite_medsam"))
    written = run_tables(
        "segmentation", metrics, root / "tables", root / "tables/cells.parquet", PARAMS, sidecars
    )
    return root, written


def test_segmentation_tables_written_in_three_formats(seg_run):
    root, written = seg_run
    assert {p.name for p in written} == {f"{t}.{e}" for t in SEG_TABLES for e in ("csv", "md", "tex")}
    t1 = pd.read_csv(root / "tables/table1_segmentation.csv")
    assert len(t1) == 6  # 2 models x 3 strategies
    for d in ("demo_derm", "demo_mri"):
        for col in ("clean", "dB", "dM"):
            assert {f"{d} {col}", f"{d} {col}_ci_low", f"{d} {col}_ci_high", f"{d} {col}_n"} <= set(
                t1.columns
            )
    row = t1[(t1["model"] == "tiny_sam") & (t1["strategy"] == "lora")].iloc[0]
    assert row["demo_derm clean_n"] == 6
    assert row["demo_derm dB_n"] == 6 * 3 * 2  # images x levels x base types
    assert row["trainable_params"] == 1000 and row["trainable_share"] == pytest.approx(0.01)
    assert t1.loc[t1["strategy"] == "zero_shot", "trainable_params"].eq(0).all()
    # medical types were made twice as damaging as base ones in the synthetic data
    assert (t1["avg dM"] > t1["avg dB"]).all()
    tex = (root / "tables/table1_segmentation.tex").read_text()
    assert all(k in tex for k in ("\\toprule", "\\midrule", "\\bottomrule", "demo\\_derm dB"))
    md = (root / "tables/table1_segmentation.md").read_text()
    assert "n=36" in md and "LoRA" in md and "| 1.0K | 1.00% |" in md


def test_cells_are_the_mean_over_training_seeds_with_their_sd(tmp_path):
    """Three training seeds: each Table 1 cell equals the mean of the cells computed from one seed's files
    alone, and the seed-to-seed SD of those cells follows the image-level interval."""
    from medfm_robust.report.build import segmentation_tables

    metrics, sidecars = write_seg_tree(tmp_path, strategies=("zero_shot", "full"), train_seeds=(0, 1, 2))
    settings = BootstrapSettings(samples=50, seed=0)

    def table1(paths):
        t = next(t for t in segmentation_tables(paths, sidecars, settings) if t.name == "table1_segmentation")
        return t, t.cells.set_index(["model", "strategy", "column"])

    table, pooled = table1(metrics)
    per_seed = [table1([p for p in metrics if "/zero_shot/" in p or f"/seed{k}/" in p])[1] for k in (0, 1, 2)]
    cell = ("tiny_sam", "full", "demo_derm dB")
    values = np.array([c.loc[cell, "mean"] for c in per_seed])
    assert values[1] - values[0] == pytest.approx(0.01) and values[2] - values[1] == pytest.approx(0.01)
    assert pooled.loc[cell, "mean"] == pytest.approx(values.mean())
    assert pooled.loc[cell, "seed_sd"] == pytest.approx(values.std(ddof=1)) == pytest.approx(0.01)
    avg = ("tiny_sam", "full", "avg dB")
    assert pooled.loc[avg, "mean"] == pytest.approx(np.mean([c.loc[avg, "mean"] for c in per_seed]))
    # zero_shot is not trained: one seed, no SD; clean scores do not depend on the synthetic seed
    assert np.isnan(pooled.loc[("tiny_sam", "zero_shot", "demo_derm dB"), "seed_sd"])
    assert pooled.loc[("tiny_sam", "full", "demo_derm clean"), "seed_sd"] == pytest.approx(0.0)
    # a cell pooling a trained strategy with zero_shot (one seed, constant): half the spread
    ds = next(t for t in segmentation_tables(metrics, sidecars, settings) if t.name == "dataset_sensitivity")
    assert ds.cells.set_index("dataset").loc["demo_derm", "seed_sd"] == pytest.approx(0.005)
    row = table.display().set_index("strategy").loc["Full", "demo_derm dB"]
    lo, hi = pooled.loc[cell, ["ci_low", "ci_high"]]
    assert row.startswith(f"{values.mean():.3f} [{lo:.3f}, {hi:.3f}] ±0.010 sd(seeds) n=")
    assert "sd(seeds)" not in table.display().set_index("strategy").loc["Zero-shot", "demo_derm dB"]
    assert "demo_derm dB_seed_sd" in table.wide().columns


def test_rankings_follow_the_synthetic_effects(seg_run):
    root, _ = seg_run
    rank = pd.read_csv(root / "tables/strategy_ranking.csv")
    assert list(rank["strategy"]) == ["full", "zero_shot", "lora"]
    assert list(rank["rank"]) == [1, 2, 3]
    top = pd.read_csv(root / "tables/top_perturbations.csv")
    assert list(top["category"][:2]) == ["medical", "medical"] and len(top) == 4
    sev = pd.read_csv(root / "tables/severity_levels.csv")
    assert (sev["L1"] < sev["L2"]).all() and (sev["L2"] < sev["L3"]).all()
    adv = pd.read_csv(root / "tables/adversarial.csv")
    assert {"FGSM L1", "PGD L3"} <= set(adv.columns)


def test_vlm_tables(tmp_path):
    paths = write_vlm_tree(tmp_path)
    # a perturbed file covering only some samples: clean must still be paired with the same images
    part = next(p for p in paths if p.endswith("vqa/demo_xray/contrast.parquet"))
    frame = pd.read_parquet(part)
    write_parquet_atomic(part, frame[frame["sample_id"] > "vqa_003"])
    run_tables("vlm", paths, tmp_path / "tables", tmp_path / "tables/vlm.parquet", PARAMS)
    t = pd.read_csv(tmp_path / "tables/vlm_clean_vs_perturbed.csv")
    assert len(t) == 6 and set(t["metric"]) == {"correct", "rouge_l", "iou"}
    np.testing.assert_allclose(t["clean"] - t["perturbed"], t["absolute drop"], atol=1e-8)
    np.testing.assert_allclose(t["relative drop %"], 100 * t["absolute drop"] / t["clean"], rtol=1e-7)
    per = pd.read_csv(tmp_path / "tables/vlm_perturbation_drop.csv")
    assert set(per["perturbation"]) == {"gaussian_noise", "contrast"} and {"vqa", "caption"} <= set(
        per.columns
    )
    lv = pd.read_csv(tmp_path / "tables/vlm_level_drop.csv")
    assert {"L1", "L2"} <= set(lv.columns)
    bad = dict(PARAMS, vlm_metrics={"vqa": "correct"})
    with pytest.raises(DataError, match="caption"):
        run_tables("vlm", paths, tmp_path / "t2", tmp_path / "t2/c.parquet", bad)


def test_cell_formats():
    assert format_cell(0.12345, 0.1, 0.2, 7) == "0.123 [0.100, 0.200] n=7"
    assert format_cell(0.5, float("nan"), float("nan"), 3) == "0.500 n=3"
    assert format_cell(float("nan"), 0, 0, 0) == "–"
    cells = pd.DataFrame(
        {"k": ["a_b"], "column": ["x%"], "mean": [0.5], "ci_low": [0.4], "ci_high": [0.6], "n": [2]}
    )
    t = Table("t", "T & co", ["k"], cells, ["x%"])
    assert "T \\& co" in to_latex(t) and "x\\%" in to_latex(t)
    assert "| a b | 0.500 [0.400, 0.600] n=2 |" in to_markdown(t)


def test_figures_all_panels(seg_run, tmp_path):
    root, _ = seg_run
    stems = [tmp_path / n for n in SEG_PANELS]
    written = draw_figures("segmentation", root / "tables/cells.parquet", stems)
    assert len(written) == 2 * len(SEG_PANELS)
    for p in written:
        assert p.stat().st_size > 5000
        assert p.read_bytes()[:4] in (b"\x89PNG", b"%PDF")
    vlm = write_vlm_tree(tmp_path / "v", tasks=("vqa", "grounding"))
    run_tables("vlm", vlm, tmp_path / "vt", tmp_path / "vt/c.parquet", PARAMS)
    names = vlm_panel_names(["vqa", "grounding"])
    assert names == [
        "fig3h_grounding_clean_vs_perturbed",
        "fig3k_grounding_perturbations",
        "fig3g_vqa_clean_vs_perturbed",
        "fig3j_vqa_perturbations",
    ]
    out = draw_figures("vlm", tmp_path / "vt/c.parquet", [tmp_path / n for n in names])
    assert len(out) == 8
    with pytest.raises(DataError, match="unknown"):
        draw_figures("segmentation", root / "tables/cells.parquet", [tmp_path / "fig9z_nope"])


def test_palette_is_stable_and_distinct():
    assert palette.strategy_color("lora") == "#d62728"
    assert palette.strategy_color("my_new_strategy") == palette.strategy_color("my_new_strategy")
    assert palette.strategy_color("a_strategy") != palette.strategy_color("b_strategy")
    known = [palette.strategy_color(s) for s in palette.STRATEGY_ORDER]
    assert len(set(known)) == len(known)
    assert palette.label("dec_prompt") == "Dec-Prompt" and palette.label("odd_name") == "odd name"


def test_report_targets_follow_the_upstream_stages():
    """The report's inputs are the other stages' runs at the paths module's paths (no path parsing)."""
    import copy

    from medfm_robust.config import load_config
    from medfm_robust.perturb import workflow as perturb_wf
    from medfm_robust.seg import finetune_config as ft_cfg
    from medfm_robust.seg import workflow as seg_wf
    from medfm_robust.vlm import workflow as vlm_wf

    cfg = load_config(Path(__file__).parent / "config" / "ci.yaml")
    datasets = sorted(cfg["datasets"])
    rt = ReportTargets.from_config(cfg)
    assert rt.seg_metric_files() == sorted(seg_wf.final_targets(cfg, seg_wf.finetune_strategies(cfg)))
    assert rt.vlm_metric_files() == sorted(vlm_wf.final_targets(cfg))
    sidecars = [t for t in ft_cfg.final_targets(cfg, datasets) if t.endswith(".json")]
    assert rt.checkpoint_sidecars() == sorted(s for s in sidecars if "/pretrained" not in s) and sidecars
    sheets = [t for t in perturb_wf.final_targets(cfg, datasets) if t.endswith(".png")]
    assert [paths.contact_sheet(m) for m in rt.contact_sheet_modalities()] == sheets
    tg = rt.targets()
    assert paths.table("table1_segmentation", "tex") in tg
    assert {paths.report_contact_sheet(m) for m in rt.contact_sheet_modalities()} <= set(tg)
    # Without fine-tuning runs, the sidecars of the evaluated trained runs (none for zero_shot).
    bare = copy.deepcopy(cfg)
    bare["finetune"]["models"] = {}
    for mcfg in bare["segmentation"]["models"].values():
        mcfg["strategies"] = ["zero_shot", "lora"]
    runs = ReportTargets.from_config(bare).seg_runs
    expected = sorted({paths.checkpoint_sidecar(m, d, s, k) for m, s, k, d in runs if s == "lora"})
    assert ReportTargets.from_config(bare).checkpoint_sidecars() == expected and expected
    bare["vlm"]["models"] = {}
    assert not any("fig3j" in t for t in ReportTargets.from_config(bare).targets())


@pytest.mark.slow
@pytest.mark.workflow
def test_report_rules_and_html_report(tmp_path):
    """rules/report.smk on synthetic metric files: tables, figures and a self-contained HTML report."""
    import subprocess
    import sys

    from test_workflow_support import env_for

    repo = Path(__file__).resolve().parents[1]
    metrics, _ = write_seg_tree(tmp_path / "results", strategies=("zero_shot",))
    vlm = write_vlm_tree(tmp_path / "results", tasks=("vqa",))
    files = sorted(str(Path(p).relative_to(tmp_path)) for p in metrics + vlm)
    seg_runs = [("tiny_sam", "zero_shot", 0, d) for d in ("demo_derm", "demo_mri")]
    vlm_runs = {
        (m, "vqa", "demo_xray"): ["clean", "gaussian_noise", "contrast"]
        for m in ("tiny_llava", "tiny_gemma3")
    }
    synthetic = ReportTargets(seg_runs, vlm_runs, [], [])
    assert sorted(synthetic.seg_metric_files() + synthetic.vlm_metric_files()) == files
    runs = f"ReportTargets({seg_runs!r}, {vlm_runs!r}, [], [])"
    (tmp_path / "Snakefile").write_text(  # the report rules on the synthetic runs instead of the config's
        f'configfile: "config.yaml"\ninclude: "{repo}/rules/common.smk"\n'
        "from medfm_robust.report.targets import ReportTargets\n"
        f"ReportTargets.from_config = classmethod(lambda cls, config: {runs})\n"
        f'include: "{repo}/rules/report.smk"\n'
        "rule all:\n    input: get_final_output()\n    default_target: True\n"
    )
    (tmp_path / "config.yaml").write_text(
        "datasets:\n  demo_derm: {adapter: demo, modality: dermoscopy}\n"
        "  demo_mri: {adapter: demo, modality: mri}\n"
        "report: {bootstrap_samples: 50, figure_dpi: 60}\n"
    )
    smk = [str(Path(sys.executable).parent / "snakemake"), "--cores", "2"]
    env = env_for(repo)
    run = subprocess.run(smk, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tmp_path / "results/tables/table1_segmentation.tex").exists()
    assert (tmp_path / "results/figures/fig3j_vqa_perturbations.pdf").exists()
    assert not (tmp_path / "results/figures/fig3k_grounding_perturbations.png").exists()
    html = tmp_path / "report.html"
    rep = subprocess.run(
        [*smk, "--report", str(html)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert rep.returncode == 0, rep.stderr[-4000:]
    text = html.read_text(errors="replace")
    for name in (*SEG_TABLES, *SEG_PANELS, "vlm_level_drop", "fig3g_vqa_clean_vs_perturbed"):
        assert name in text, name
    # nothing re-runs when nothing changed
    dry = subprocess.run([*smk, "-n"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "Nothing to be done" in dry.stdout + dry.stderr
