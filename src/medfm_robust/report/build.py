"""Build the paper's segmentation and VLM tables from the per-image metric Parquet files.

Segmentation tables (``SEG_TABLES``) and VLM tables (``VLM_TABLES``) are lists of file stems; each is
written as ``<stem>.csv``, ``<stem>.md`` and ``<stem>.tex`` under ``results/tables/``. The long cells of
all tables go to ``<kind>_cells.parquet`` for the figures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from medfm_robust.errors import DataError
from medfm_robust.io import write_parquet_atomic
from medfm_robust.report.aggregate import (
    SEG_COLUMNS,
    VLM_COLUMNS,
    BootstrapSettings,
    hierarchical_mean,
    paired_drops,
    read_metric_files,
    spread_across_runs,
)
from medfm_robust.report.palette import strategy_sort_key
from medfm_robust.report.scores import DEFAULTS as STATS_DEFAULTS
from medfm_robust.report.scores import STATS_TABLES, statistics_tables
from medfm_robust.report.tables import Table, cells_from, format_params, long_cells, write_table

log = logging.getLogger(__name__)

SEG_UNIT = ("model", "strategy", "dataset")
VLM_UNIT = ("model", "task", "dataset")
PERTURBATION_CATEGORIES = ("base", "medical")
SEG_TABLES = (
    "table1_segmentation",
    "performance_robustness",
    "strategy_ranking",
    "model_comparison",
    "dataset_sensitivity",
    "severity_levels",
    "top_perturbations",
    "adversarial",
    *STATS_TABLES,  # issue 15: normalised scores, dataset x perturbation effects, paired differences
)
VLM_TABLES = ("vlm_clean_vs_perturbed", "vlm_perturbation_drop", "vlm_level_drop")
TRAINABLE_KEYS = ("trainable_params", "trainable_parameters", "n_trainable")
TOTAL_KEYS = ("total_params", "total_parameters", "n_total")


def _strategy_rows(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Unique rows of ``keys`` sorted with strategies in the paper's order."""
    rows = frame[list(keys)].drop_duplicates()
    return rows.sort_values(
        list(keys), key=lambda s: s.map(strategy_sort_key) if s.name == "strategy" else s
    ).reset_index(drop=True)


def read_sidecars(paths: Sequence[str]) -> pd.DataFrame:
    """Trainable / total parameter counts from checkpoint sidecars ``{model}/{dataset}/{strategy}.json``.

    The sidecar's ``strategy`` (if present) must match the file name; the parameter counts are read from
    the first key present among :data:`TRAINABLE_KEYS` / :data:`TOTAL_KEYS` (``DataError`` naming the file
    when none is).
    """
    rows = []
    for path in paths:
        p = Path(path)
        try:
            meta = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{p}: cannot read checkpoint sidecar ({exc})") from exc
        strategy = p.stem
        if meta.get("strategy", strategy) != strategy:
            raise DataError(f"{p}: field 'strategy' is {meta['strategy']!r}, file name says {strategy!r}")
        trainable = next((meta[k] for k in TRAINABLE_KEYS if k in meta), None)
        total = next((meta[k] for k in TOTAL_KEYS if k in meta), None)
        if trainable is None:
            raise DataError(f"{p}: no trainable parameter count (one of {', '.join(TRAINABLE_KEYS)})")
        rows.append(
            {
                "model": p.parent.parent.name,
                "dataset": p.parent.name,
                "strategy": strategy,
                "trainable": float(trainable),
                "total": float(total) if total is not None else None,
            }
        )
    return pd.DataFrame(rows, columns=["model", "dataset", "strategy", "trainable", "total"])


def _params_extra(sidecars: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Per (model, strategy): trainable and total parameters (median over datasets; 0 for zero_shot)."""
    out = rows[["model", "strategy"]].copy()
    if sidecars.empty:
        sidecars = pd.DataFrame(columns=["model", "strategy", "trainable", "total"])
    med = (
        sidecars.groupby(["model", "strategy"])[["trainable", "total"]].median().reset_index()
        if len(sidecars)
        else sidecars[["model", "strategy", "trainable", "total"]]
    )
    out = out.merge(med, on=["model", "strategy"], how="left")
    out.loc[out["strategy"].eq("zero_shot") & out["trainable"].isna(), "trainable"] = 0.0
    out = out.rename(columns={"trainable": "trainable_params", "total": "total_params"})
    out["trainable_share"] = out["trainable_params"] / out["total_params"]
    return out[["model", "strategy", "trainable_params", "trainable_share"]]


def _format_share(value: object) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * float(value):.2f}%"


METRIC_LABELS = {"iou": "IoU", "dice": "Dice", "nsd": "NSD"}


def segmentation_tables(
    metric_paths: Sequence[str],
    sidecar_paths: Sequence[str],
    settings: BootstrapSettings,
    metric: str = "iou",
    top_k: int = 15,
    in_band_only: bool = True,
) -> list[Table]:
    """All segmentation tables (see :data:`SEG_TABLES`) from the per-image metric files."""
    frame = read_metric_files(metric_paths, SEG_COLUMNS, "segmentation", extra_columns=("reachable",))
    if frame.empty:
        raise DataError("segmentation report: no metric rows (no segmentation metric files given)")
    clean, drops = paired_drops(frame, metric, SEG_UNIT, in_band_only=in_band_only, source="segmentation")
    drops = drops.rename(columns={"drop": "value"})
    pert = drops[drops["category"].isin(PERTURBATION_CATEGORIES)]
    adv = drops[drops["category"] == "adversarial"]
    m = METRIC_LABELS.get(metric, metric)
    hm = lambda obs, by: hierarchical_mean(obs, by, SEG_UNIT, ["dataset"], settings)  # noqa: E731
    tables: list[Table] = []
    steps = tqdm(total=len(SEG_TABLES) - len(STATS_TABLES), desc="segmentation tables", unit="table")

    # Table 1: model x strategy rows; per dataset clean, dB, dM; averages.
    ms_rows = _strategy_rows(clean, ["model", "strategy"])
    cells = [
        cells_from(hm(clean, ["model", "strategy", "dataset"]), ["model", "strategy"], "dataset", "{} clean")
    ]
    datasets = sorted(clean["dataset"].unique())
    columns = []
    for cat, short in (("base", "dB"), ("medical", "dM")):
        sub = pert[pert["category"] == cat]
        cells.append(
            cells_from(
                hm(sub, ["model", "strategy", "dataset"]), ["model", "strategy"], "dataset", f"{{}} {short}"
            )
        )
        cells.append(cells_from(hm(sub, ["model", "strategy"]), ["model", "strategy"], f"avg {short}"))
    for d in datasets:
        columns += [f"{d} clean", f"{d} dB", f"{d} dM"]
    columns += ["avg dB", "avg dM"]
    sidecars = read_sidecars(sidecar_paths)
    tables.append(
        Table(
            "table1_segmentation",
            f"Clean {m} and mean {m} drop under base (dB) and medical-specific (dM) perturbations",
            ["model", "strategy"],
            pd.concat(cells, ignore_index=True),
            columns,
            rows=ms_rows,
            extra=_params_extra(sidecars, ms_rows),
            formatters={"trainable_params": format_params, "trainable_share": _format_share},
            notes=[f"Cells: hierarchical mean [{settings.ci:.0%} bootstrap CI over images] n=observations."],
        )
    )
    steps.update()

    perf = pd.concat(
        [
            cells_from(hm(clean, ["model", "strategy"]), ["model", "strategy"], f"clean {m}"),
            cells_from(hm(pert, ["model", "strategy"]), ["model", "strategy"], f"{m} drop"),
        ]
    )
    tables.append(
        Table(
            "performance_robustness",
            f"Clean {m} vs mean {m} drop per model and strategy",
            ["model", "strategy"],
            perf,
            [f"clean {m}", f"{m} drop"],
            rows=ms_rows,
        )
    )
    steps.update()

    rank = hm(pert, ["strategy"]).sort_values(["mean", "strategy"]).reset_index(drop=True)
    rank_extra = rank[["strategy"]].assign(rank=range(1, len(rank) + 1))
    tables.append(
        Table(
            "strategy_ranking",
            f"Strategy ranking by mean {m} drop (all models and datasets)",
            ["strategy"],
            cells_from(rank, ["strategy"], f"{m} drop"),
            [f"{m} drop"],
            rows=rank[["strategy"]],
            extra=rank_extra,
        )
    )
    steps.update()

    mc = hm(pert, ["model", "strategy"])
    models = sorted(mc["model"].unique())
    tables.append(
        Table(
            "model_comparison",
            f"Mean {m} drop per strategy and model",
            ["strategy"],
            cells_from(mc, ["strategy"], "model"),
            models,
            rows=_strategy_rows(mc, ["strategy"]),
        )
    )
    steps.update()

    ds = hm(pert, ["dataset"])
    spread = spread_across_runs(pert, ["dataset"], SEG_UNIT)
    modality = clean.merge(frame[["dataset", "modality"]].drop_duplicates("dataset"), on="dataset")
    ds_extra = (
        ds[["dataset"]]
        .merge(modality[["dataset", "modality"]].drop_duplicates(), on="dataset")
        .merge(spread, on="dataset", how="left")
    )
    ds_extra = ds_extra.rename(columns={"std_runs": "sd across runs"})
    ds_sorted = ds.sort_values(["mean", "dataset"]).reset_index(drop=True)
    tables.append(
        Table(
            "dataset_sensitivity",
            f"Dataset sensitivity: mean {m} drop over models and strategies",
            ["dataset"],
            cells_from(ds, ["dataset"], f"{m} drop"),
            [f"{m} drop"],
            rows=ds_sorted[["dataset"]],
            extra=ds_extra,
        )
    )
    steps.update()

    sev = hm(pert, ["strategy", "level"])
    levels = sorted(sev["level"].unique())
    tables.append(
        Table(
            "severity_levels",
            f"Mean {m} drop per severity level and strategy",
            ["strategy"],
            cells_from(sev, ["strategy"], "level", "L{}"),
            [f"L{lv}" for lv in levels],
            rows=_strategy_rows(sev, ["strategy"]),
        )
    )
    steps.update()

    top = hm(pert, ["perturbation", "category"]).sort_values(
        ["mean", "perturbation"], ascending=[False, True]
    )
    top = top.head(top_k).reset_index(drop=True)
    n_ds = pert.groupby("perturbation")["dataset"].nunique().rename("datasets").reset_index()
    top_extra = top[["perturbation", "category"]].assign(rank=range(1, len(top) + 1)).merge(n_ds)
    tables.append(
        Table(
            "top_perturbations",
            f"The {top_k} most damaging perturbations (mean {m} drop)",
            ["perturbation"],
            cells_from(top, ["perturbation"], f"{m} drop"),
            [f"{m} drop"],
            rows=top[["perturbation"]],
            extra=top_extra[["perturbation", "rank", "category", "datasets"]],
        )
    )
    steps.update()

    if adv.empty:
        adv_cells = pd.DataFrame(columns=["model", "strategy", "column", "mean", "ci_low", "ci_high", "n"])
        adv_cols: list[str] = []
    else:
        a = hm(adv, ["model", "strategy", "perturbation", "level"])
        adv_cells = cells_from(a, ["model", "strategy"], ["perturbation", "level"], "{} L{}")
        adv_cols = [
            f"{p} L{lv}" for p in sorted(a["perturbation"].unique()) for lv in sorted(a["level"].unique())
        ]
        adv_cols = [c for c in adv_cols if c in set(adv_cells["column"])]
        adv_cells["column"] = adv_cells["column"].str.replace("fgsm", "FGSM").str.replace("pgd", "PGD")
        adv_cols = [c.replace("fgsm", "FGSM").replace("pgd", "PGD") for c in adv_cols]
    tables.append(
        Table(
            "adversarial",
            f"Mean {m} drop under FGSM and PGD per attack level",
            ["model", "strategy"],
            adv_cells,
            adv_cols,
            rows=ms_rows,
            notes=[] if adv_cols else ["No adversarial evaluation in this configuration."],
        )
    )
    steps.update()
    steps.close()
    return tables


def vlm_tables(
    metric_paths: Sequence[str],
    settings: BootstrapSettings,
    metrics: Mapping[str, str],
    in_band_only: bool = True,
) -> list[Table]:
    """All VLM tables (see :data:`VLM_TABLES`); ``metrics`` maps a task to its per-sample score column."""
    frame = read_metric_files(metric_paths, VLM_COLUMNS, "VLM", extra_columns=sorted(set(metrics.values())))
    if frame.empty:
        raise DataError("VLM report: no metric rows (no VLM metric files given)")
    frame = frame.rename(columns={"sample_id": "image_id"})
    cleans, drops, perturbed = [], [], []
    for task, rows in frame.groupby("task", sort=True):
        if task not in metrics:
            raise DataError(
                f"VLM report: no score column configured for task '{task}' (config report.vlm_metrics)"
            )
        clean, drop = paired_drops(
            rows, metrics[task], VLM_UNIT, in_band_only=in_band_only, source=f"VLM {task}"
        )
        # the clean score of the same images, in the same hierarchy, so that clean - perturbed = drop
        paired = drop[drop["perturbed"].notna()].drop(columns=["drop", "perturbed"])
        cleans.append(paired.rename(columns={"clean": "value"}))
        drops.append(drop.rename(columns={"drop": "value"}))
        perturbed.append(drop.drop(columns=["drop"]).rename(columns={"perturbed": "value"}))
    clean, drop, pert = (pd.concat(x, ignore_index=True) for x in (cleans, drops, perturbed))
    hm = lambda obs, by: hierarchical_mean(obs, by, VLM_UNIT, ["task", "dataset"], settings)  # noqa: E731
    mt = ["model", "task"]
    rows = clean[mt].drop_duplicates().sort_values(["task", "model"]).reset_index(drop=True)
    c, p, d = hm(clean, mt), hm(pert, mt), hm(drop, mt)
    rel = c[mt].assign(clean=c["mean"]).merge(d[[*mt, "mean"]], on=mt, how="left")
    rel["relative drop %"] = 100 * rel["mean"] / rel["clean"]
    extra = rows.assign(metric=rows["task"].map(lambda t: metrics[t])).merge(
        rel[[*mt, "relative drop %"]], on=mt, how="left"
    )
    cells = pd.concat(
        [cells_from(c, mt, "clean"), cells_from(p, mt, "perturbed"), cells_from(d, mt, "absolute drop")],
        ignore_index=True,
    )
    tables = [
        Table(
            "vlm_clean_vs_perturbed",
            "VLMs: clean vs perturbed score per model and task",
            mt,
            cells,
            ["clean", "perturbed", "absolute drop"],
            rows=rows,
            extra=extra,
            notes=[
                "Clean = clean score of the perturbed images, averaged in the same hierarchy, so "
                "clean - perturbed = absolute drop. Relative drop = absolute drop / clean (point estimate)."
            ],
        )
    ]
    pt = hm(drop, ["perturbation", "category", "task"])
    prow = pt[["perturbation", "category"]].drop_duplicates().sort_values(["category", "perturbation"])
    tasks = sorted(pt["task"].unique())
    tables.append(
        Table(
            "vlm_perturbation_drop",
            "VLMs: mean score drop per perturbation and task",
            ["perturbation"],
            cells_from(pt, ["perturbation"], "task"),
            tasks,
            rows=prow[["perturbation"]],
            extra=prow,
        )
    )
    lv = hm(drop, [*mt, "level"])
    tables.append(
        Table(
            "vlm_level_drop",
            "VLMs: mean score drop per severity level",
            mt,
            cells_from(lv, mt, "level", "L{}"),
            [f"L{x}" for x in sorted(lv["level"].unique())],
            rows=rows,
        )
    )
    return tables


def write_tables(tables: Sequence[Table], out_dir: str | Path, cells_path: str | Path) -> list[Path]:
    """Write every table as CSV, Markdown and LaTeX under ``out_dir`` and all cells to ``cells_path``."""
    out = Path(out_dir)
    written = []
    for t in tables:
        paths = [out / f"{t.name}.{ext}" for ext in ("csv", "md", "tex")]
        write_table(t, *paths)
        written += paths
    write_parquet_atomic(cells_path, long_cells(tables))
    return written


def run_tables(
    kind: str,
    metric_paths: Sequence[str],
    out_dir: str | Path,
    cells_path: str | Path,
    params: Mapping[str, Any],
    sidecar_paths: Sequence[str] = (),
) -> list[Path]:
    """Entry point of the table rules: ``kind`` is ``segmentation`` or ``vlm``; ``params``: report config."""
    settings = BootstrapSettings(int(params["bootstrap_samples"]), float(params["ci"]), int(params["seed"]))
    if kind == "segmentation":
        tables = segmentation_tables(
            metric_paths,
            sidecar_paths,
            settings,
            params["segmentation_metric"],
            int(params["top_k"]),
            bool(params["in_band_only"]),
        )
        tables += statistics_tables(metric_paths, settings, params)  # issue 15 (report/scores.py)
    elif kind == "vlm":
        tables = vlm_tables(metric_paths, settings, params["vlm_metrics"], bool(params["in_band_only"]))
    else:
        raise ValueError(f"unknown table kind {kind!r}")
    # honest cells: fewer than report.min_cell_n images -> n but no interval (report/tables.py)
    min_n = int(params.get("min_cell_n", STATS_DEFAULTS["min_cell_n"]))
    tables = [replace(t, min_images=min_n) for t in tables]
    log.info("%s: %d tables from %d metric files", kind, len(tables), len(metric_paths))
    return write_tables(tables, out_dir, cells_path)
