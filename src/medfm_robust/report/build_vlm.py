"""The VLM tables (:data:`VLM_TABLES`) from the per-sample VLM metric Parquet files: clean vs perturbed
beside the image-blind controls, drops per perturbation and per level, answer rates."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medfm_robust.errors import DataError
from medfm_robust.metrics.captions import BLEU_STATS, corpus_bleu
from medfm_robust.report.aggregate import (
    VLM_COLUMNS,
    BootstrapSettings,
    hierarchical_mean,
    paired_drops,
    read_metric_files,
)
from medfm_robust.report.tables import CELL_FIELDS, Table, cells_from

VLM_UNIT = ("model", "task", "dataset")
VLM_TABLES = ("vlm_clean_vs_perturbed", "vlm_perturbation_drop", "vlm_level_drop", "vlm_answer_rates")


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

VLM_TABLE_NOTES = (
    "Clean = clean score of the perturbed images, averaged in the same hierarchy, so "
    "clean - perturbed = absolute drop. Relative drop = absolute drop / clean (point estimate).",
    "Blank image / no image: the clean questions asked with a mid-grey image / with no image (where the "
    "model takes text only). 'near blank' = the perturbed score is at or below the upper end of the "
    "blank-image interval: the model is guessing, and its small drop is no sign of robustness.",
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


def _read_vlm_frame(
    metric_paths: Sequence[str], metrics: Mapping[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The VLM metric rows (``sample_id`` renamed ``image_id``), split into (scored rows, image-blind
    controls)."""
    corpus_cols = {c for m in metrics.values() if m in CORPUS_METRICS for c in CORPUS_METRICS[m][0]}
    wanted = {m for m in metrics.values() if m not in CORPUS_METRICS} | corpus_cols
    wanted |= {"parse_ok", "abstained"}
    frame = read_metric_files(metric_paths, VLM_COLUMNS, "VLM", extra_columns=sorted(wanted))
    if frame.empty:
        raise DataError("VLM report: no metric rows (no VLM metric files given)")
    frame = frame.rename(columns={"sample_id": "image_id"})
    is_control = frame["category"].astype(str) == "control"
    return frame[~is_control], frame[is_control]


def _clean_vs_perturbed(
    scores: _TaskScores, pairs: Mapping[str, pd.DataFrame], controls: pd.DataFrame, metrics: Mapping[str, str]
) -> Table:
    """Clean, perturbed and absolute drop per (model, task), beside the controls' scores."""
    mt = ["model", "task"]
    c = scores.mean(pairs, mt, ["c_"])
    p = scores.mean(pairs, mt, ["p_"])
    d = scores.mean(pairs, mt, ["c_", "p_"], [1.0, -1.0])
    rows = _model_task_rows(c)
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
    notes = list(VLM_TABLE_NOTES)
    if any(m in CORPUS_METRICS for m in metrics.values()):
        notes.append("Corpus metrics (bleu4_corpus) pool the n-gram counts of each (perturbation, level) "
                     "image set (pycocoevalcap's BLEU-4); intervals resample the images' counts.")
    if flagged:
        notes.append("Near blank-image score (guessing): " + ", ".join(flagged) + ".")
    return Table(
        "vlm_clean_vs_perturbed",
        VLM_TABLE_TITLE,
        mt,
        pd.concat(parts, ignore_index=True),
        columns,
        rows=rows,
        extra=extra,
        notes=notes,
    )


def _model_task_rows(clean: pd.DataFrame) -> pd.DataFrame:
    """The (model, task) rows of the VLM tables, by task then model."""
    return clean[["model", "task"]].drop_duplicates().sort_values(["task", "model"]).reset_index(drop=True)


def _perturbation_drop(scores: _TaskScores, pairs: Mapping[str, pd.DataFrame]) -> Table:
    pt = scores.mean(pairs, ["perturbation", "category", "task"], ["c_", "p_"], [1.0, -1.0])
    prow = pt[["perturbation", "category"]].drop_duplicates().sort_values(["category", "perturbation"])
    return Table(
        "vlm_perturbation_drop",
        "VLMs: mean score drop per perturbation and task",
        ["perturbation"],
        cells_from(pt, ["perturbation"], "task"),
        sorted(pt["task"].unique()),
        rows=prow[["perturbation"]],
        extra=prow,
    )


def _level_drop(scores: _TaskScores, pairs: Mapping[str, pd.DataFrame], rows: pd.DataFrame) -> Table:
    mt = ["model", "task"]
    lv = scores.mean(pairs, [*mt, "level"], ["c_", "p_"], [1.0, -1.0])
    return Table(
        "vlm_level_drop",
        "VLMs: mean score drop per severity level",
        mt,
        cells_from(lv, mt, "level", "L{}"),
        [f"L{x}" for x in sorted(lv["level"].unique())],
        rows=rows,
    )


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
    frame, controls = _read_vlm_frame(metric_paths, metrics)
    scores = _TaskScores(settings, metrics)
    pairs: dict[str, pd.DataFrame] = {}
    for task, rows in frame.groupby("task", sort=True):
        if task not in metrics:
            raise DataError(
                f"VLM report: no score column configured for task '{task}' (config report.vlm_metrics)"
            )
        pairs[task] = _vlm_pairs(rows, scores.columns(task), in_band_only, task)
    table = _clean_vs_perturbed(scores, pairs, controls, metrics)
    rows = table.row_frame()
    return [
        table,
        _perturbation_drop(scores, pairs),
        _level_drop(scores, pairs, rows),
        _answer_rates(pd.concat([frame, controls], ignore_index=True), settings, rows),
    ]


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
