"""Build the paper's segmentation and VLM tables from the per-image metric Parquet files.

Segmentation tables (``SEG_TABLES``) and VLM tables (``VLM_TABLES``) are lists of file stems; each is
written as ``<stem>.csv``, ``<stem>.md`` and ``<stem>.tex`` under ``results/tables/``. The long cells of
all tables go to ``<kind>_cells.parquet`` for the figures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from medfm_robust.errors import DataError
from medfm_robust.io import write_parquet_atomic
from medfm_robust.metrics.captions import BLEU_STATS, corpus_bleu
from medfm_robust.report.aggregate import (
    SEED_KEY,
    SEG_COLUMNS,
    VLM_COLUMNS,
    BootstrapSettings,
    hierarchical_mean,
    paired_drops,
    read_metric_files,
    spread_across_runs,
    with_seed_key,
)
from medfm_robust.report.palette import strategy_sort_key
from medfm_robust.report.scores import DEFAULTS as STATS_DEFAULTS
from medfm_robust.report.scores import STATS_TABLES, statistics_tables
from medfm_robust.report.tables import CELL_FIELDS, Table, cells_from, format_params, long_cells, write_table

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
VLM_TABLES = ("vlm_clean_vs_perturbed", "vlm_perturbation_drop", "vlm_level_drop", "vlm_answer_rates")
TRAINABLE_KEYS = ("trainable_params", "trainable_parameters", "n_trainable")
TOTAL_KEYS = ("total_params", "total_parameters", "n_total")


def _strategy_rows(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Unique rows of ``keys`` sorted with strategies in the paper's order."""
    rows = frame[list(keys)].drop_duplicates()
    return rows.sort_values(
        list(keys), key=lambda s: s.map(strategy_sort_key) if s.name == "strategy" else s
    ).reset_index(drop=True)


def read_sidecars(paths: Sequence[str]) -> pd.DataFrame:
    """Trainable / total parameter counts from checkpoint sidecars
    ``{model}/{dataset}/{strategy}/seed{train_seed}.json``.

    The sidecar's ``strategy`` (if present) must match the folder name; the parameter counts are read from
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
        strategy = p.parent.name
        if meta.get("strategy", strategy) != strategy:
            raise DataError(f"{p}: field 'strategy' is {meta['strategy']!r}, folder name says {strategy!r}")
        trainable = next((meta[k] for k in TRAINABLE_KEYS if k in meta), None)
        total = next((meta[k] for k in TOTAL_KEYS if k in meta), None)
        if trainable is None:
            raise DataError(f"{p}: no trainable parameter count (one of {', '.join(TRAINABLE_KEYS)})")
        rows.append(
            {
                "model": p.parent.parent.parent.name,
                "dataset": p.parent.parent.name,
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
    """All segmentation tables (see :data:`SEG_TABLES`) from the per-image metric files; with several
    training seeds every cell is the mean over seeds and carries their SD (``seed_sd``)."""
    extra = ("reachable", SEED_KEY)
    frame = read_metric_files(metric_paths, SEG_COLUMNS, "segmentation", extra_columns=extra)
    if frame.empty:
        raise DataError("segmentation report: no metric rows (no segmentation metric files given)")
    unit = with_seed_key(frame, SEG_UNIT)
    clean, drops = paired_drops(frame, metric, unit, in_band_only=in_band_only, source="segmentation")
    drops = drops.rename(columns={"drop": "value"})
    pert = drops[drops["category"].isin(PERTURBATION_CATEGORIES)]
    adv = drops[drops["category"] == "adversarial"]
    m = METRIC_LABELS.get(metric, metric)
    hm = lambda obs, by: hierarchical_mean(obs, by, unit, ["dataset"], settings)  # noqa: E731
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


#: Set-level VLM metrics formed from per-sample counts: name -> (count columns, score of summed counts).
CORPUS_METRICS: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, Any]], Any]]] = {
    "bleu4_corpus": (BLEU_STATS, corpus_bleu),
}
#: Image-blind control conditions (category ``control``) and their column labels.
VLM_CONTROLS = {"blank_image": "blank image", "no_image": "no image"}
VLM_TABLE_TITLE = (
    "VLMs: clean vs perturbed score per model and task, beside the image-blind controls (blank image, no "
    "image). A model whose perturbed score stays above its blank-image score is robust; one near its "
    "blank-image score is guessing."
)


class _TaskScores:
    """Per task: observation frames for :func:`hierarchical_mean` and the score it forms (image mean of a
    per-sample column, or a corpus metric from summed counts, see :data:`CORPUS_METRICS`)."""

    def __init__(self, settings: BootstrapSettings, metrics: Mapping[str, str]) -> None:
        self.settings = settings
        self.metrics = metrics

    def columns(self, task: str) -> list[str]:
        metric = self.metrics[task]
        return list(CORPUS_METRICS[metric][0]) if metric in CORPUS_METRICS else [metric]

    def mean(self, obs: Mapping[str, pd.DataFrame], by: Sequence[str], prefixes: Sequence[str] = ("",),
             signs: Sequence[float] = (1.0,)) -> pd.DataFrame:
        """Hierarchical cells per task of ``sum(sign * score(prefix + columns))`` over ``prefixes``."""
        out = []
        for task, frame in sorted(obs.items()):
            if frame.empty:
                continue
            metric = self.metrics[task]
            cols = [f"{p}{c}" for p in prefixes for c in self.columns(task)]
            if metric in CORPUS_METRICS:
                kw: dict[str, Any] = {"corpus": _signed_corpus(metric, prefixes, signs),
                                      "corpus_columns": cols}
                frame = frame.assign(value=1.0)
            else:
                frame = frame.assign(value=sum(sg * frame[c] for c, sg in zip(cols, signs, strict=True)))
                kw = {}
            out.append(hierarchical_mean(frame, by, VLM_UNIT, ["task", "dataset"], self.settings, **kw))
        return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=[*by, "mean"])


def _signed_corpus(metric: str, prefixes: Sequence[str], signs: Sequence[float]) -> Callable[..., Any]:
    """``sums -> sum(sign * metric(counts with prefix))`` for :func:`hierarchical_mean`'s ``corpus``."""
    stats, score = CORPUS_METRICS[metric]

    def combined(sums: Mapping[str, np.ndarray]) -> np.ndarray:
        pairs = zip(prefixes, signs, strict=True)
        return sum(sign * score({c: sums[f"{p}{c}"] for c in stats}) for p, sign in pairs)

    return combined


def _vlm_pairs(rows: pd.DataFrame, columns: Sequence[str], in_band_only: bool, task: str) -> pd.DataFrame:
    """Perturbed rows with the clean values of the same image: ``c_<col>`` and ``p_<col>`` per column."""
    out = None
    for col in columns:
        _, drop = paired_drops(rows, col, VLM_UNIT, in_band_only=in_band_only, source=f"VLM {task}")
        if out is None:
            out = drop.drop(columns=["clean", "perturbed", "drop"])
        out[f"c_{col}"] = drop["clean"].to_numpy()
        out[f"p_{col}"] = drop["perturbed"].to_numpy()
    return out if out is not None else pd.DataFrame()


def vlm_tables(
    metric_paths: Sequence[str],
    settings: BootstrapSettings,
    metrics: Mapping[str, str],
    in_band_only: bool = True,
) -> list[Table]:
    """All VLM tables (see :data:`VLM_TABLES`); ``metrics`` maps a task to its per-sample score column or a
    corpus metric (:data:`CORPUS_METRICS`, e.g. ``bleu4_corpus``: corpus BLEU-4 of each (run, perturbation,
    level) image set, bootstrapped by resampling the images' BLEU counts).

    Image-blind controls (category ``control``) are kept out of the drops and reported beside clean and
    perturbed scores; unparsed and abstained answers are reported per model, task and condition.
    """
    corpus_cols = {c for m in metrics.values() if m in CORPUS_METRICS for c in CORPUS_METRICS[m][0]}
    wanted = {m for m in metrics.values() if m not in CORPUS_METRICS} | corpus_cols
    wanted |= {"parse_ok", "abstained"}
    frame = read_metric_files(metric_paths, VLM_COLUMNS, "VLM", extra_columns=sorted(wanted))
    if frame.empty:
        raise DataError("VLM report: no metric rows (no VLM metric files given)")
    frame = frame.rename(columns={"sample_id": "image_id"})
    is_control = frame["category"].astype(str) == "control"
    controls, frame = frame[is_control], frame[~is_control]
    scores = _TaskScores(settings, metrics)
    pairs: dict[str, pd.DataFrame] = {}
    for task, rows in frame.groupby("task", sort=True):
        if task not in metrics:
            raise DataError(
                f"VLM report: no score column configured for task '{task}' (config report.vlm_metrics)"
            )
        pairs[task] = _vlm_pairs(rows, scores.columns(task), in_band_only, task)
    mt = ["model", "task"]
    c = scores.mean(pairs, mt, ["c_"])
    p = scores.mean(pairs, mt, ["p_"])
    d = scores.mean(pairs, mt, ["c_", "p_"], [1.0, -1.0])
    rows = c[mt].drop_duplicates().sort_values(["task", "model"]).reset_index(drop=True)
    rel = c[mt].assign(clean=c["mean"]).merge(d[[*mt, "mean"]], on=mt, how="left")
    rel["relative drop %"] = 100 * rel["mean"] / rel["clean"]
    parts = [cells_from(c, mt, "clean"), cells_from(p, mt, "perturbed"), cells_from(d, mt, "absolute drop")]
    columns = ["clean", "perturbed", "absolute drop"]
    blank = None
    for name, label_ in VLM_CONTROLS.items():
        sub = {t: g for t, g in controls[controls["perturbation"] == name].groupby("task", sort=True)
               if t in metrics}
        ctrl = scores.mean(sub, mt)
        if len(ctrl):
            parts.append(cells_from(ctrl, mt, label_))
            columns.append(label_)
            blank = ctrl if name == "blank_image" else blank
    check, flagged = _image_blind_check(p, blank, mt)
    extra = rows.assign(metric=rows["task"].map(lambda t: metrics[t])).merge(
        rel[[*mt, "relative drop %"]], on=mt, how="left"
    ).merge(check, on=mt, how="left")
    notes = [
        "Clean = clean score of the perturbed images, averaged in the same hierarchy, so "
        "clean - perturbed = absolute drop. Relative drop = absolute drop / clean (point estimate).",
        "Blank image / no image: the clean questions asked with a mid-grey image / with no image (where the "
        "model takes text only). 'near blank' = the perturbed score is at or below the upper end of the "
        "blank-image interval: the model is guessing, and its small drop is no sign of robustness.",
    ]
    if any(m in CORPUS_METRICS for m in metrics.values()):
        notes.append("Corpus metrics (bleu4_corpus) pool the n-gram counts of each (perturbation, level) "
                     "image set (pycocoevalcap's BLEU-4); intervals resample the images' counts.")
    if flagged:
        notes.append("Near blank-image score (guessing): " + ", ".join(flagged) + ".")
    tables = [
        Table(
            "vlm_clean_vs_perturbed",
            VLM_TABLE_TITLE,
            mt,
            pd.concat(parts, ignore_index=True),
            columns,
            rows=rows,
            extra=extra,
            notes=notes,
        )
    ]
    pt = scores.mean(pairs, ["perturbation", "category", "task"], ["c_", "p_"], [1.0, -1.0])
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
    lv = scores.mean(pairs, [*mt, "level"], ["c_", "p_"], [1.0, -1.0])
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
    tables.append(_answer_rates(pd.concat([frame, controls], ignore_index=True), settings, rows))
    return tables


def _image_blind_check(
    perturbed: pd.DataFrame, blank: pd.DataFrame | None, keys: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    """Per (model, task): ``near blank`` when the perturbed score is at or below the blank-image score's
    upper CI bound (its mean when no CI), else ``above blank``; and the flagged ``model/task`` names."""
    out = perturbed[keys].copy()
    if blank is None or blank.empty:
        out["image-blind check"] = "–"
        return out, []
    merged = perturbed[[*keys, "mean"]].merge(blank[[*keys, "mean", "ci_high"]], on=keys, how="left",
                                              suffixes=("", "_blank"))
    bound = merged["ci_high"].where(merged["ci_high"].notna(), merged["mean_blank"])
    near = merged["mean"] <= bound
    out["image-blind check"] = np.where(bound.isna(), "–", np.where(near, "near blank", "above blank"))
    flags = near & bound.notna()
    flagged = [f"{m}/{t}" for m, t, f in zip(merged["model"], merged["task"], flags, strict=True) if f]
    return out, flagged


#: Leading rows of the answer-rate table (each perturbation type follows).
VLM_RATE_CONDITIONS = ("clean", "perturbed", *VLM_CONTROLS)


def _answer_rates(frame: pd.DataFrame, settings: BootstrapSettings, rows: pd.DataFrame) -> Table:
    """Unparsed and abstained answer rates per (model, task, condition): ``clean``, ``perturbed`` (all types
    pooled in the hierarchy), the controls, then each perturbation type."""
    keys = ["model", "task", "condition"]
    pert = frame["perturbation"].astype(str)
    is_pert = (frame["category"].astype(str) != "control") & (pert != "clean")
    coarse = frame.assign(condition=np.where(is_pert, "perturbed", pert))
    fine = frame[is_pert].assign(condition=pert[is_pert])
    order = {c: i for i, c in enumerate(VLM_RATE_CONDITIONS)}
    parts, columns = [], []
    for what, col, flip in (("unparsed", "parse_ok", True), ("abstained", "abstained", False)):
        if col not in frame.columns:
            continue
        stats = []
        for data in (coarse, fine):
            values = data[col].astype("boolean").astype("float64")
            obs = data.assign(value=1.0 - values if flip else values)
            if len(obs):
                stats.append(hierarchical_mean(obs, keys, VLM_UNIT, ["task", "dataset"], settings))
        parts.append(cells_from(pd.concat(stats, ignore_index=True), keys, what))
        columns.append(what)
    empty = pd.DataFrame({**{k: pd.Series(dtype=object) for k in keys},
                          **{k: pd.Series(dtype="float64") for k in CELL_FIELDS}})
    cells = pd.concat(parts, ignore_index=True) if parts else cells_from(empty, keys, "none")
    table_rows = cells[keys].drop_duplicates()
    table_rows = table_rows.assign(_o=table_rows["condition"].map(lambda c: order.get(c, len(order))))
    task_order = {t: i for i, t in enumerate(rows["task"].drop_duplicates())}
    table_rows = table_rows.assign(_t=table_rows["task"].map(lambda t: task_order.get(t, len(task_order))))
    table_rows = table_rows.sort_values(["_t", "model", "_o", "condition"]).drop(columns=["_o", "_t"])
    return Table(
        "vlm_answer_rates",
        "VLMs: unparsed and abstained answers per model, task and condition (fractions)",
        keys,
        cells,
        columns,
        rows=table_rows.reset_index(drop=True),
        notes=[
            "Unparsed = no answer a reader would recover without doubt (counted as wrong). Abstained = the "
            "output declines to answer ('cannot determine', refusals) and names no answer. 'perturbed' pools "
            "every perturbation type in the hierarchy; the rows below it give each type."
        ],
    )


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
