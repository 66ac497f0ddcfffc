"""Normalised and clinical robustness scores beside the absolute drop, and the per-dataset effect table.

Per (model, strategy), over every dataset and base/medical perturbation type, in the hierarchy of
:mod:`medfm_robust.report.aggregate`:

* **relative drop** = mean drop / mean clean score of the same (perturbed) observations (point estimate);
* **mCE** (ImageNet-C style, Hendrycks & Dietterich 2019): with the error ``E = 1 - score`` of the
  perturbed image, ``CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c}`` per perturbation type ``c`` over the
  severity levels ``s`` both rows have, where the reference row is strategy ``reference`` (default
  ``zero_shot``) of the same model and dataset; mCE is the mean of ``CE_c`` over types, then over
  datasets (point estimate; < 1: fewer errors under perturbation than the reference);
* **failure rate**: the share of images whose Dice is below ``failure_dice`` (default 0.5), clean and
  perturbed, with the bootstrap interval.

The effect table lists the mean drop of every perturbation type per dataset (over models and strategies),
plus the mean of the base and of the medical types, so that the two categories are compared within the
same dataset rather than across datasets of different difficulty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from medfm_robust.errors import DataError
from medfm_robust.report import paired
from medfm_robust.report.aggregate import (
    SEG_COLUMNS,
    BootstrapSettings,
    hierarchical_mean,
    paired_drops,
    read_metric_files,
    with_seed_key,
)
from medfm_robust.report.palette import METRIC_LABELS, strategy_sort_key
from medfm_robust.report.tables import Table, cells_from

#: A segmentation run (without its training seed) and the perturbed categories of the drops.
SEG_UNIT = ("model", "strategy", "dataset")
PERTURBATION_CATEGORIES = ("base", "medical")
STATS_TABLES = ("normalised_scores", "dataset_perturbation_effects", paired.TABLE_NAME)


def _unit(frame: pd.DataFrame) -> tuple[str, ...]:
    """Run identity; a training seed is part of it when the metrics carry one (averaged as runs)."""
    return with_seed_key(frame, SEG_UNIT)


def corruption_errors(
    drops: pd.DataFrame, reference: str, unit: Sequence[str], settings: BootstrapSettings
) -> pd.DataFrame:
    """mCE per (model, strategy, dataset) relative to the ``reference`` strategy (see module docstring).

    Args:
        drops: :func:`~medfm_robust.report.aggregate.paired_drops` rows with ``perturbed`` in [0, 1].
        reference, unit, settings: the reference strategy, run keys and bootstrap settings (only the
            point estimate is used).

    Returns:
        ``model``, ``strategy``, ``dataset``, ``mce`` (float64) and ``n`` (observations of the row); only
        (model, dataset) pairs with a reference row appear (the table notes the models without one).
    """
    obs = drops.assign(value=1.0 - drops["perturbed"])
    keys = ["model", "strategy", "dataset", "perturbation", "level"]
    err = hierarchical_mean(obs, keys, unit, ["dataset"], replace(settings, samples=0))
    ref = err[err["strategy"] == reference].drop(columns="strategy")
    both = err.merge(ref, on=["model", "dataset", "perturbation", "level"], suffixes=("", "_ref"))
    row = ["model", "strategy", "dataset"]
    sums = both.groupby([*row, "perturbation"], sort=True)[["mean", "mean_ref", "n"]].sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        ce = (sums["mean"] / sums["mean_ref"]).rename("ce")
    out = ce.groupby(row, sort=True).mean().rename("mce").to_frame()
    out["n"] = sums["n"].groupby(row, sort=True).sum()
    return out.reset_index()


def normalised_table(
    clean: pd.DataFrame,
    drops: pd.DataFrame,
    dice: tuple[pd.DataFrame, pd.DataFrame],
    unit: Sequence[str],
    metric: str,
    settings: BootstrapSettings,
    reference: str,
    failure_dice: float,
) -> Table:
    """The ``normalised_scores`` table, rows (model, strategy).

    Args:
        clean, drops: :func:`~medfm_robust.report.aggregate.paired_drops` of the table metric (drops of
            base and medical types only).
        dice: the same for Dice (failure rates).
        unit, metric, settings, reference, failure_dice: run keys, metric name, bootstrap settings,
            reference strategy of the mCE and Dice threshold of a failure.
    """
    m = METRIC_LABELS.get(metric, metric)
    ms = ["model", "strategy"]
    hm = lambda obs, by: hierarchical_mean(obs, by, unit, ["dataset"], settings)  # noqa: E731
    ok = drops["perturbed"].notna()
    d = hm(drops.assign(value=drops["drop"]), ms)
    c = hm(drops[ok].assign(value=drops.loc[ok, "clean"]), ms)
    rel = d[[*ms, "mean", "n"]].merge(c[[*ms, "mean"]].rename(columns={"mean": "clean"}), on=ms, how="left")
    rel = rel.assign(mean=rel["mean"] / rel["clean"], ci_low=np.nan, ci_high=np.nan)

    ce, per_ds, overall = _mce_cells(drops, reference, unit, settings)
    dice_clean, dice_drops = dice
    failed = (dice_drops["perturbed"] < failure_dice).astype("float64").where(dice_drops["perturbed"].notna())
    fail_p = hm(dice_drops.assign(value=failed), ms)
    fail_c = hm(dice_clean.assign(value=(dice_clean["value"] < failure_dice).astype("float64")), ms)
    rows = strategy_rows(clean, ms)
    thr = f"Dice<{failure_dice:g}"
    cols = [f"clean {m}", f"{m} drop", "relative drop", f"mCE vs {reference}", f"fail clean {thr}",
            f"fail perturbed {thr}"]
    cells = [
        cells_from(hm(clean, ms), ms, cols[0]),
        cells_from(d, ms, cols[1]),
        cells_from(rel, ms, cols[2]),
        cells_from(overall, ms, cols[3]),
        cells_from(fail_c, ms, cols[4]),
        cells_from(fail_p, ms, cols[5]),
        cells_from(per_ds, ms, "dataset", "{} mCE"),
    ]
    return Table(
        "normalised_scores",
        f"Normalised and clinical scores: relative {m} drop, mCE vs {reference}, failure rate at {thr}",
        ms,
        pd.concat(cells, ignore_index=True),
        [*cols, *(f"{ds} mCE" for ds in sorted(per_ds["dataset"].unique()))],
        rows=rows,
        notes=_normalised_notes(m, reference, failure_dice, sorted(set(rows["model"]) - set(ce["model"]))),
    )


def _mce_cells(
    drops: pd.DataFrame, reference: str, unit: Sequence[str], settings: BootstrapSettings
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """:func:`corruption_errors` and its point-estimate cells per (model, strategy, dataset) and per
    (model, strategy) (mean over datasets)."""
    ce = corruption_errors(drops, reference, unit, settings)
    per_ds = ce.rename(columns={"mce": "mean"}).assign(ci_low=np.nan, ci_high=np.nan)
    overall = ce.groupby(["model", "strategy"], sort=True).agg(mean=("mce", "mean"), n=("n", "sum"))
    overall = overall.reset_index()
    return ce, per_ds, overall.assign(ci_low=np.nan, ci_high=np.nan)


def _normalised_notes(m: str, reference: str, failure_dice: float, no_ref: list[str]) -> list[str]:
    """Notes of the ``normalised_scores`` table; ``no_ref``: models without a reference-strategy row."""
    notes = [
        f"relative drop = {m} drop / clean {m} of the same observations; mCE = mean over types (then "
        f"datasets) of sum over levels of (1 - {m}) divided by the same sum for {reference} of the same "
        "model and dataset (ImageNet-C style; < 1: fewer errors than the reference); both are point "
        f"estimates. fail = share of images with Dice < {failure_dice:g}, with the bootstrap CI."
    ]
    if no_ref:
        notes.append(
            f"No {reference} rows (report.reference_strategy) for model(s) {', '.join(no_ref)}: mCE blank."
        )
    return notes


def strategy_rows(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Unique rows of ``keys`` sorted with strategies in the paper's order."""
    rows = frame[list(keys)].drop_duplicates()
    return rows.sort_values(
        list(keys), key=lambda s: s.map(strategy_sort_key) if s.name == "strategy" else s
    ).reset_index(drop=True)


def effects_table(
    drops: pd.DataFrame, unit: Sequence[str], metric: str, settings: BootstrapSettings
) -> Table:
    """The ``dataset_perturbation_effects`` table: rows perturbation types (then the base and medical
    means), one column per dataset; each cell averages every model and strategy of that dataset.
    ``drops``: base and medical rows of :func:`~medfm_robust.report.aggregate.paired_drops`."""
    m = METRIC_LABELS.get(metric, metric)
    pert = drops.rename(columns={"drop": "value"})
    hm = lambda obs, by: hierarchical_mean(obs, by, unit, ["dataset"], settings)  # noqa: E731
    per_type = hm(pert, ["dataset", "category", "perturbation"])
    per_cat = hm(pert, ["dataset", "category"]).assign(perturbation=lambda x: "all " + x["category"])
    both = pd.concat([per_type, per_cat], ignore_index=True)
    rows = both[["perturbation", "category"]].drop_duplicates()
    rows = rows.assign(_all=rows["perturbation"].str.startswith("all ")).sort_values(
        ["category", "_all", "perturbation"]
    )
    return Table(
        "dataset_perturbation_effects",
        f"Mean {m} drop per perturbation type and dataset (over models and strategies)",
        ["perturbation"],
        cells_from(both, ["perturbation"], "dataset"),
        sorted(both["dataset"].unique()),
        rows=rows[["perturbation"]].reset_index(drop=True),
        extra=rows[["perturbation", "category"]].reset_index(drop=True),
        notes=[
            "Compare base and medical types within a column (the same dataset and images); – : not applied."
        ],
    )


def statistics_tables(
    metric_paths: Sequence[str], settings: BootstrapSettings, params: Mapping[str, Any]
) -> list[Table]:
    """The tables of :data:`STATS_TABLES` from the segmentation metric files; ``params``: the validated
    ``report`` config (schema defaults filled in)."""
    metric = str(params["segmentation_metric"])
    in_band = bool(params["in_band_only"])
    extra = (paired.SEED_KEY, "reachable")
    frame = read_metric_files(metric_paths, SEG_COLUMNS, "segmentation", extra_columns=extra)
    if frame.empty:
        raise DataError("segmentation report: no metric rows (no segmentation metric files given)")
    unit = _unit(frame)
    pairs = {}
    for score in dict.fromkeys((metric, "dice")):
        c, d = paired_drops(frame, score, unit, in_band_only=in_band, source="segmentation")
        pairs[score] = (c, d[d["category"].isin(PERTURBATION_CATEGORIES)].reset_index(drop=True))
    clean, drops = pairs[metric]
    ref, thr = str(params["reference_strategy"]), float(params["failure_dice"])
    min_n = int(params["min_cell_n"])
    return [
        normalised_table(clean, drops, pairs["dice"], unit, metric, settings, ref, thr),
        effects_table(drops, unit, metric, settings),
        paired.paired_table(
            drops.rename(columns={"drop": "value"}),
            settings,
            METRIC_LABELS.get(metric, metric),
            str(params["paired_correction"]),
            float(params["significance_level"]),
            min_n,
        ),
    ]
