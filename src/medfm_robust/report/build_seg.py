"""The paper's segmentation tables (:data:`SEG_TABLES`, one builder function each) from the per-image metric
Parquet files and the checkpoint sidecars."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from medfm_robust.errors import DataError
from medfm_robust.report.aggregate import (
    SEED_KEY,
    SEG_COLUMNS,
    BootstrapSettings,
    hierarchical_mean,
    paired_drops,
    read_metric_files,
    spread_across_runs,
    with_seed_key,
)
from medfm_robust.report.palette import METRIC_LABELS
from medfm_robust.report.scores import (
    PERTURBATION_CATEGORIES,
    SEG_UNIT,
    STATS_TABLES,
    strategy_rows,
)
from medfm_robust.report.tables import Table, cells_from, format_params

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
TRAINABLE_KEYS = ("trainable_params", "trainable_parameters", "n_trainable")
TOTAL_KEYS = ("total_params", "total_parameters", "n_total")


def read_sidecars(paths: Sequence[str]) -> pd.DataFrame:
    """Trainable / total parameter counts from checkpoint sidecars (``paths.checkpoint_sidecar``).

    The run is named by the sidecar's own ``model``, ``dataset`` and ``strategy`` fields (``DataError`` naming
    the file and field when one is missing); the parameter counts are read from the first key present among
    :data:`TRAINABLE_KEYS` / :data:`TOTAL_KEYS` (``DataError`` naming the file when none is).
    """
    rows = []
    for path in paths:
        p = Path(path)
        try:
            meta = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{p}: cannot read checkpoint sidecar ({exc})") from exc
        missing = [k for k in ("model", "dataset", "strategy") if k not in meta]
        if missing:
            raise DataError(f"{p}: checkpoint sidecar without field(s) {missing}")
        trainable = next((meta[k] for k in TRAINABLE_KEYS if k in meta), None)
        total = next((meta[k] for k in TOTAL_KEYS if k in meta), None)
        if trainable is None:
            raise DataError(f"{p}: no trainable parameter count (one of {', '.join(TRAINABLE_KEYS)})")
        rows.append(
            {
                "model": str(meta["model"]),
                "dataset": str(meta["dataset"]),
                "strategy": str(meta["strategy"]),
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


@dataclass(frozen=True)
class _SegCells:
    """What every segmentation table reads: the metric rows, the clean rows, the perturbed (base and
    medical) and adversarial drops (column ``value``), the metric's label and the run keys."""

    frame: pd.DataFrame
    clean: pd.DataFrame
    pert: pd.DataFrame
    adv: pd.DataFrame
    label: str
    unit: tuple[str, ...]
    settings: BootstrapSettings
    ms_rows: pd.DataFrame

    def hm(self, obs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
        """Hierarchical mean of ``obs`` per ``by`` (datasets are the top level)."""
        return hierarchical_mean(obs, by, self.unit, ["dataset"], self.settings)


def _table1(s: _SegCells, sidecar_paths: Sequence[str]) -> Table:
    """Table 1: model x strategy rows; per dataset clean, dB, dM; averages; parameter counts."""
    m, ms = s.label, ["model", "strategy"]
    cells = [cells_from(s.hm(s.clean, [*ms, "dataset"]), ms, "dataset", "{} clean")]
    for cat, short in (("base", "dB"), ("medical", "dM")):
        sub = s.pert[s.pert["category"] == cat]
        cells.append(cells_from(s.hm(sub, [*ms, "dataset"]), ms, "dataset", f"{{}} {short}"))
        cells.append(cells_from(s.hm(sub, ms), ms, f"avg {short}"))
    columns = [f"{d} {c}" for d in sorted(s.clean["dataset"].unique()) for c in ("clean", "dB", "dM")]
    columns += ["avg dB", "avg dM"]
    sidecars = read_sidecars(sidecar_paths)
    return Table(
        "table1_segmentation",
        f"Clean {m} and mean {m} drop under base (dB) and medical-specific (dM) perturbations",
        ms,
        pd.concat(cells, ignore_index=True),
        columns,
        rows=s.ms_rows,
        extra=_params_extra(sidecars, s.ms_rows),
        formatters={"trainable_params": format_params, "trainable_share": _format_share},
        notes=[f"Cells: hierarchical mean [{s.settings.ci:.0%} bootstrap CI over images] n=observations."],
    )


def _performance(s: _SegCells) -> Table:
    m, ms = s.label, ["model", "strategy"]
    perf = pd.concat(
        [cells_from(s.hm(s.clean, ms), ms, f"clean {m}"), cells_from(s.hm(s.pert, ms), ms, f"{m} drop")]
    )
    return Table(
        "performance_robustness",
        f"Clean {m} vs mean {m} drop per model and strategy",
        ms,
        perf,
        [f"clean {m}", f"{m} drop"],
        rows=s.ms_rows,
    )


def _strategy_ranking(s: _SegCells) -> Table:
    m = s.label
    rank = s.hm(s.pert, ["strategy"]).sort_values(["mean", "strategy"]).reset_index(drop=True)
    return Table(
        "strategy_ranking",
        f"Strategy ranking by mean {m} drop (all models and datasets)",
        ["strategy"],
        cells_from(rank, ["strategy"], f"{m} drop"),
        [f"{m} drop"],
        rows=rank[["strategy"]],
        extra=rank[["strategy"]].assign(rank=range(1, len(rank) + 1)),
    )


def _model_comparison(s: _SegCells) -> Table:
    mc = s.hm(s.pert, ["model", "strategy"])
    return Table(
        "model_comparison",
        f"Mean {s.label} drop per strategy and model",
        ["strategy"],
        cells_from(mc, ["strategy"], "model"),
        sorted(mc["model"].unique()),
        rows=strategy_rows(mc, ["strategy"]),
    )


def _dataset_sensitivity(s: _SegCells) -> Table:
    m = s.label
    ds = s.hm(s.pert, ["dataset"])
    spread = spread_across_runs(s.pert, ["dataset"], SEG_UNIT)
    modality = s.clean.merge(s.frame[["dataset", "modality"]].drop_duplicates("dataset"), on="dataset")
    ds_extra = (
        ds[["dataset"]]
        .merge(modality[["dataset", "modality"]].drop_duplicates(), on="dataset")
        .merge(spread, on="dataset", how="left")
    )
    ds_sorted = ds.sort_values(["mean", "dataset"]).reset_index(drop=True)
    return Table(
        "dataset_sensitivity",
        f"Dataset sensitivity: mean {m} drop over models and strategies",
        ["dataset"],
        cells_from(ds, ["dataset"], f"{m} drop"),
        [f"{m} drop"],
        rows=ds_sorted[["dataset"]],
        extra=ds_extra.rename(columns={"std_runs": "sd across runs"}),
    )


def _severity_levels(s: _SegCells) -> Table:
    sev = s.hm(s.pert, ["strategy", "level"])
    return Table(
        "severity_levels",
        f"Mean {s.label} drop per severity level and strategy",
        ["strategy"],
        cells_from(sev, ["strategy"], "level", "L{}"),
        [f"L{lv}" for lv in sorted(sev["level"].unique())],
        rows=strategy_rows(sev, ["strategy"]),
    )


def _top_perturbations(s: _SegCells, top_k: int) -> Table:
    m = s.label
    top = s.hm(s.pert, ["perturbation", "category"])
    top = top.sort_values(["mean", "perturbation"], ascending=[False, True])
    top = top.head(top_k).reset_index(drop=True)
    n_ds = s.pert.groupby("perturbation")["dataset"].nunique().rename("datasets").reset_index()
    top_extra = top[["perturbation", "category"]].assign(rank=range(1, len(top) + 1)).merge(n_ds)
    return Table(
        "top_perturbations",
        f"The {top_k} most damaging perturbations (mean {m} drop)",
        ["perturbation"],
        cells_from(top, ["perturbation"], f"{m} drop"),
        [f"{m} drop"],
        rows=top[["perturbation"]],
        extra=top_extra[["perturbation", "rank", "category", "datasets"]],
    )


def _adversarial(s: _SegCells) -> Table:
    if s.adv.empty:
        adv_cells = pd.DataFrame(columns=["model", "strategy", "column", "mean", "ci_low", "ci_high", "n"])
        adv_cols: list[str] = []
    else:
        a = s.hm(s.adv, ["model", "strategy", "perturbation", "level"])
        adv_cells = cells_from(a, ["model", "strategy"], ["perturbation", "level"], "{} L{}")
        adv_cols = [
            f"{p} L{lv}" for p in sorted(a["perturbation"].unique()) for lv in sorted(a["level"].unique())
        ]
        adv_cols = [c for c in adv_cols if c in set(adv_cells["column"])]
        adv_cells["column"] = adv_cells["column"].str.replace("fgsm", "FGSM").str.replace("pgd", "PGD")
        adv_cols = [c.replace("fgsm", "FGSM").replace("pgd", "PGD") for c in adv_cols]
    return Table(
        "adversarial",
        f"Mean {s.label} drop under FGSM and PGD per attack level",
        ["model", "strategy"],
        adv_cells,
        adv_cols,
        rows=s.ms_rows,
        notes=[] if adv_cols else ["No adversarial evaluation in this configuration."],
    )


def segmentation_tables(
    metric_paths: Sequence[str],
    sidecar_paths: Sequence[str],
    settings: BootstrapSettings,
    metric: str = "iou",
    top_k: int = 15,
    in_band_only: bool = True,
) -> list[Table]:
    """All segmentation tables (see :data:`SEG_TABLES`) from the per-image metric files; with several
    training seeds every cell is the mean over seeds and carries their SD (``seed_sd``)."""
    extra = ("reachable", SEED_KEY)
    frame = read_metric_files(metric_paths, SEG_COLUMNS, "segmentation", extra_columns=extra)
    if frame.empty:
        raise DataError("segmentation report: no metric rows (no segmentation metric files given)")
    unit = with_seed_key(frame, SEG_UNIT)
    clean, drops = paired_drops(frame, metric, unit, in_band_only=in_band_only, source="segmentation")
    drops = drops.rename(columns={"drop": "value"})
    cells = _SegCells(
        frame,
        clean,
        drops[drops["category"].isin(PERTURBATION_CATEGORIES)],
        drops[drops["category"] == "adversarial"],
        METRIC_LABELS.get(metric, metric),
        unit,
        settings,
        strategy_rows(clean, ["model", "strategy"]),
    )
    builders: list[Callable[[_SegCells], Table]] = [
        lambda s: _table1(s, sidecar_paths),
        _performance,
        _strategy_ranking,
        _model_comparison,
        _dataset_sensitivity,
        _severity_levels,
        lambda s: _top_perturbations(s, top_k),
        _adversarial,
    ]
    return [build(cells) for build in tqdm(builders, desc="segmentation tables", unit="table")]
