"""Hierarchical aggregation of per-image metrics with a seeded, image-level bootstrap.

The paper's numbers are formed from the per-image (per-sample) Parquet files only, in a fixed hierarchy
(written down in ``docs/workflow.md``)::

    image -> (perturbation, level) mean -> perturbation mean (over levels)
          -> run mean (over perturbations; a run is one model x strategy x dataset [x training seed], or
             model x task x dataset)
          -> seed mean (over the training seeds of a run, when the run keys include ``train_seed``)
          -> cell mean (over the runs in the table cell, each run weighted equally)

A dimension that a table keeps (for example ``level`` in the per-severity table) is simply not averaged
out. Drops are ``clean score - perturbed score`` of the *same image*, so every level of the hierarchy
is a mean of paired differences.

Confidence intervals come from a percentile bootstrap over images: within each population (a dataset
for segmentation, a task x dataset for VLMs) the images are resampled with replacement (multinomial
counts drawn from :func:`medfm_robust.seeding.rng_for` keyed by the population), and the *whole* hierarchy
is recomputed on every replicate. The same resampled image set is used for every model, strategy,
training seed, perturbation and level of a population, so paired comparisons keep their correlation.

Training seeds: the interval is image-level (the seeds are averaged inside every replicate); the spread
between training seeds is reported beside it as ``seed_sd``, the standard deviation (ddof=1) over seeds of
the cell computed from one seed's runs only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medfm_robust.errors import DataError
from medfm_robust.metrics.segmentation import METRIC_COLUMNS
from medfm_robust.seeding import rng_for

#: The training-seed column of segmentation metrics (a run key when present).
SEED_KEY = "train_seed"
#: Required columns of the metric files the report reads (``reachable`` and ``train_seed`` are optional:
#: files written before the reachability certificate lack the former and count every excluded output as
#: out of band; files written before training seeds lack the latter and are one seed).
SEG_COLUMNS = tuple(c for c in METRIC_COLUMNS if c not in ("reachable", SEED_KEY))
VLM_COLUMNS = (
    "sample_id",
    "model",
    "task",
    "dataset",
    "modality",
    "perturbation",
    "category",
    "level",
    "ssim",
    "in_band",
)
#: Order in which dimensions are averaged out (innermost first).
HIERARCHY = ("image_id", "level", "perturbation", SEED_KEY, "run")


def with_seed_key(frame: pd.DataFrame, unit_keys: Sequence[str]) -> tuple[str, ...]:
    """Run keys of ``frame``: ``unit_keys`` plus ``train_seed`` when the frame carries training seeds."""
    return (*unit_keys, SEED_KEY) if SEED_KEY in frame.columns else tuple(unit_keys)


@dataclass(frozen=True)
class BootstrapSettings:
    """Number of bootstrap replicates (0 disables the CI), confidence level and global seed."""

    samples: int = 1000
    ci: float = 0.95
    seed: int = 0


def read_metric_files(
    paths: Sequence[str], required: Sequence[str], kind: str, extra_columns: Sequence[str] = ()
) -> pd.DataFrame:
    """Concatenate per-image metric Parquet files (the ``required`` columns plus any ``extra_columns``
    present), checking that each file has the ``required`` columns.

    Raises ``DataError`` naming the file and the missing column(s); an empty ``paths`` gives an empty
    frame with the required columns.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path in paths:
        try:
            schema = pq.read_schema(path)
        except Exception as exc:  # pyarrow raises several types for unreadable files
            raise DataError(f"{path}: cannot read {kind} metrics Parquet ({exc})") from exc
        missing = [c for c in required if c not in schema.names]
        if missing:
            raise DataError(f"{path}: {kind} metrics lack column(s) {', '.join(missing)}")
        wanted = [c for c in schema.names if c in set(required) | set(extra_columns)]
        tables.append(pq.read_table(path, columns=wanted))
    if not tables:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in required})
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def paired_drops(
    frame: pd.DataFrame,
    value: str,
    unit_keys: Sequence[str],
    image_key: str = "image_id",
    in_band_only: bool = False,
    source: str = "metrics",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a metrics frame into clean scores and per-image drops.

    Args:
        frame: rows of one metrics table (segmentation or VLM) with ``perturbation``, ``category``,
            ``level``, ``in_band``, ``value`` and the ``unit_keys`` / ``image_key`` columns.
        value: the score column (higher is better), e.g. ``iou`` or ``correct``.
        unit_keys: columns identifying a run, e.g. ``(model, strategy, dataset)``.
        image_key: the image (sample) identifier column.
        in_band_only: exclude perturbed rows whose SSIM missed the calibration band: they stay in
            ``drops`` with NaN ``perturbed``/``drop`` and ``excluded`` = ``unreachable`` (the frame's
            optional ``reachable`` column is False: no parameter in the type's bounded range reaches the
            band on that image) or ``out_of_band`` (reachable but missed), so
            :func:`hierarchical_mean` leaves them out of the means and counts them per cell.
        source: a name used in error messages.

    Returns:
        ``(clean, drops)``: ``clean`` has one row per (run, image) with column ``value``; ``drops`` has one
        row per perturbed (run, image, perturbation, level) with ``clean``, ``perturbed`` and
        ``drop = clean - perturbed`` (float64). A perturbed row without a clean row of the same image
        raises ``DataError``.
    """
    if value not in frame.columns:
        raise DataError(f"{source}: no column '{value}' to aggregate (see config report.*metric*)")
    keys = [*unit_keys, image_key]
    data = frame.copy()
    data[value] = pd.to_numeric(data[value], errors="coerce").astype("float64")
    is_clean = data["perturbation"].astype(str) == "clean"
    clean = data.loc[is_clean, [*keys, value]]
    dup = clean.duplicated(keys)
    if dup.any():
        first = clean.loc[dup, keys].iloc[0].to_dict()
        raise DataError(f"{source}: duplicate clean rows for {first}")
    clean = clean.rename(columns={value: "value"}).reset_index(drop=True)
    pert, excluded = _band_exclusions(data.loc[~is_clean], value, in_band_only)
    cols = [*keys, "perturbation", "category", "level", value]
    pert = pert[cols].rename(columns={value: "perturbed"}).assign(excluded=excluded)
    merged = pert.merge(
        clean.rename(columns={"value": "clean"}), on=keys, how="left", validate="many_to_one", indicator=True
    )
    orphan = merged["_merge"] == "left_only"
    if orphan.any():
        first = merged.loc[orphan, keys].iloc[0].to_dict()
        raise DataError(f"{source}: perturbed rows without a clean row of the same image, e.g. {first}")
    merged = merged.drop(columns="_merge")
    merged["drop"] = merged["clean"] - merged["perturbed"]
    merged["level"] = merged["level"].astype("int64")
    return clean, merged.reset_index(drop=True)


def _band_exclusions(pert: pd.DataFrame, value: str, in_band_only: bool) -> tuple[pd.DataFrame, pd.Series]:
    """With ``in_band_only``: ``pert`` with ``value`` masked (NaN) where the SSIM missed the band, and per
    row why (``out_of_band``, ``unreachable``, else ``""``; see :func:`paired_drops`)."""
    excluded = pd.Series("", index=pert.index, dtype=object)
    if in_band_only and "in_band" in pert.columns:
        out = ~pert["in_band"].fillna(False).astype(bool)
        unreach = (
            out & ~pert["reachable"].fillna(True).astype(bool) if "reachable" in pert.columns else out & False
        )
        excluded = excluded.mask(out, "out_of_band").mask(unreach, "unreachable")
        pert = pert.assign(**{value: pert[value].mask(out)})
    return pert, excluded


def _bootstrap_weights(images: Sequence[str], population: tuple, settings: BootstrapSettings) -> np.ndarray:
    """``(samples, n_images)`` float64 multinomial counts: resampling the population's images."""
    n = len(images)
    rng = rng_for("report-bootstrap", *population, n, global_seed=settings.seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=settings.samples).astype(np.float64)


def hierarchical_mean(
    obs: pd.DataFrame,
    by: Sequence[str],
    unit_keys: Sequence[str],
    population_keys: Sequence[str],
    settings: BootstrapSettings,
    value: str = "value",
    image_key: str = "image_id",
    corpus: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None,
    corpus_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """Hierarchical mean of ``value`` per cell ``by`` with n and a bootstrap CI.

    Args:
        obs: one row per observation (image x [perturbation x level]) with ``value``, ``image_key``,
            the ``unit_keys`` (run identity), ``population_keys`` (a subset of ``unit_keys``: the set of
            images resampled together) and, when present, ``perturbation`` and ``level``.
        by: the columns kept in the result (the table cell); all other dimensions are averaged out in the
            order image -> level -> perturbation -> run (see the module docstring).
        unit_keys, population_keys, settings, value, image_key: as above.
        corpus: a set-level score instead of the image mean at the innermost step (e.g. corpus BLEU): it
            gets the (resampling-weighted) sums of ``corpus_columns`` per inner group, arrays of shape
            ``(groups, 1 + samples)``, and returns the scores in that shape; the outer steps are unchanged.

    Returns:
        One row per cell with ``by`` columns, ``mean``, ``ci_low``, ``ci_high`` (NaN when the bootstrap is
        disabled), ``n`` (number of observations), ``n_images`` (distinct images), ``n_runs``, ``n_seeds``
        and ``seed_sd`` (training seeds and the SD over them of the one-seed cell values, NaN for one seed;
        seeds are averaged before the other run keys when ``train_seed`` is among ``unit_keys``), and
        ``n_out_of_band`` / ``n_unreachable``: observations left out of the cell because their SSIM
        missed the band although the type could reach it / because no parameter in the type's bounded
        range reaches it (the ``excluded`` column of :func:`paired_drops`; 0 without it).
    """
    by = list(by)
    n_excl = _excluded_counts(obs, by)
    obs = obs[obs[value].notna()]
    if obs.empty:
        return pd.DataFrame(
            columns=[*by, "mean", "ci_low", "ci_high", "n", "n_images", "n_runs", *SEED_FIELDS, *EXCLUDED]
        )
    has_pert = "perturbation" in obs.columns
    inner = [*dict.fromkeys([*unit_keys, *(["perturbation", "level"] if has_pert else []), *by])]

    # Step 1: mean over images per inner group, for the point estimate and every bootstrap replicate.
    blocks = [
        _population_means(pop if isinstance(pop, tuple) else (pop,), pop_rows, inner, settings, value,
                          image_key, corpus, corpus_columns)
        for pop, pop_rows in obs.groupby(list(population_keys), sort=True)
    ]
    stats = pd.concat(blocks, ignore_index=True)
    rep_cols = [c for c in stats.columns if c.startswith("b")]
    # Step 2: average out level, then perturbation, then the training seed, then the run, keeping `by`.
    stats, seeds = _average_out(stats, by, inner, rep_cols)
    stats = _with_intervals(_with_counts(stats, obs, by, unit_keys, image_key), rep_cols, settings)
    return _cells(stats, by, n_excl, seeds)


def _cells(stats: pd.DataFrame, by: list[str], n_excl: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    """The result frame of :func:`hierarchical_mean`: its columns, the exclusion and seed fields joined,
    counts as int64."""
    out = stats[[*by, "mean", "ci_low", "ci_high", "n", "n_images", "n_runs"]].copy()
    if by:
        out = out.merge(n_excl, on=by, how="left").merge(seeds, on=by, how="left")
    else:
        for c in EXCLUDED:
            out[c] = int(n_excl[c].iloc[0])
        for c in SEED_FIELDS:
            out[c] = seeds[c].iloc[0]
    for c in ("n", "n_images", "n_runs", "n_seeds", *EXCLUDED):
        out[c] = out[c].fillna(0).astype("int64")
    return out.reset_index(drop=True)


def _population_means(
    pop: tuple,
    pop_rows: pd.DataFrame,
    inner: list[str],
    settings: BootstrapSettings,
    value: str,
    image_key: str,
    corpus: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None,
    corpus_columns: Sequence[str],
) -> pd.DataFrame:
    """Step 1 of :func:`hierarchical_mean` for one population (images resampled together): per ``inner``
    group the image mean (or ``corpus`` score) as column ``b0`` and one column ``b<i>`` per replicate."""
    samples = max(int(settings.samples), 0)
    images = np.sort(pop_rows[image_key].astype(str).unique())
    col = np.searchsorted(images, pop_rows[image_key].astype(str).to_numpy())
    weights = _bootstrap_weights(images, pop, settings) if samples else np.zeros((0, len(images)))
    weights = np.vstack([np.ones((1, len(images))), weights])  # row 0: the point estimate
    keys = pop_rows[inner].reset_index(drop=True)
    grouped = keys.groupby(inner, sort=True, dropna=False)
    codes = grouped.ngroup().to_numpy()
    uniques = grouped.size().index.to_frame(index=False)
    n_groups, n_img = int(codes.max()) + 1, len(images)
    flat = codes * n_img + col
    size = n_groups * n_img
    m = np.bincount(flat, minlength=size).astype(np.float64).reshape(n_groups, n_img)
    x = {c: np.bincount(flat, weights=pop_rows[c].to_numpy(dtype=np.float64), minlength=size)
         .reshape(n_groups, n_img) @ weights.T for c in (corpus_columns if corpus else [value])}
    with np.errstate(invalid="ignore", divide="ignore"):
        # (groups, 1 + samples): row 0 the point estimate, then the replicates
        means = x[value] / (m @ weights.T) if corpus is None else np.asarray(corpus(x), dtype=np.float64)
    block = pd.DataFrame(means, columns=[f"b{i}" for i in range(means.shape[1])])
    return pd.concat([uniques, block], axis=1)


def _average_out(
    stats: pd.DataFrame, by: list[str], inner: list[str], rep_cols: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Step 2 of :func:`hierarchical_mean`: average out level, then perturbation, then the training seed,
    then the run, keeping ``by``; also the training seeds' spread per cell (:func:`_seed_spread`)."""
    keep = list(inner)
    for dim in ("level", "perturbation", SEED_KEY):
        if dim == SEED_KEY:
            seeds = _seed_spread(stats, by, keep, "b0")
        if dim in keep and dim not in by:
            keep.remove(dim)
            stats = stats.groupby(keep, sort=True, dropna=False)[rep_cols].mean().reset_index()
    stats = (
        stats.groupby(by, sort=True, dropna=False)[rep_cols].mean().reset_index()
        if by
        else (stats[rep_cols].mean().to_frame().T)
    )
    return stats, seeds


def _with_intervals(stats: pd.DataFrame, rep_cols: list[str], settings: BootstrapSettings) -> pd.DataFrame:
    """``stats`` with ``b0`` renamed ``mean`` and the percentile interval ``ci_low`` / ``ci_high`` of the
    replicates ``rep_cols[1:]`` (NaN when the bootstrap is disabled)."""
    reps = stats[rep_cols[1:]].to_numpy(dtype=np.float64)
    alpha = (1.0 - settings.ci) / 2.0
    if max(int(settings.samples), 0):
        with np.errstate(invalid="ignore"):
            stats["ci_low"] = np.nanquantile(reps, alpha, axis=1) if reps.size else np.nan
            stats["ci_high"] = np.nanquantile(reps, 1.0 - alpha, axis=1) if reps.size else np.nan
    else:
        stats["ci_low"] = np.nan
        stats["ci_high"] = np.nan
    return stats.rename(columns={"b0": "mean"})


def _with_counts(
    stats: pd.DataFrame, obs: pd.DataFrame, by: list[str], unit_keys: Sequence[str], image_key: str
) -> pd.DataFrame:
    """``stats`` with the cells' ``n`` (observations), ``n_images`` and ``n_runs``."""
    if not by:
        stats["n"] = len(obs)
        stats["n_images"] = obs[image_key].nunique()
        stats["n_runs"] = len(obs[list(unit_keys)].drop_duplicates())
        return stats
    counts = obs.groupby(by, sort=True, dropna=False)
    n = counts.size().rename("n").reset_index()
    n_images = counts[image_key].nunique().rename("n_images").reset_index()
    runs = obs[[*dict.fromkeys([*by, *unit_keys])]].drop_duplicates()
    n_runs = runs.groupby(by, sort=True, dropna=False).size().rename("n_runs").reset_index()
    return stats.merge(n, on=by).merge(n_images, on=by).merge(n_runs, on=by)


#: Per-cell counts of perturbed outputs left out of the means (see :func:`paired_drops`).
EXCLUDED = ("n_out_of_band", "n_unreachable")
#: Per-cell training-seed fields (see :func:`hierarchical_mean`).
SEED_FIELDS = ("n_seeds", "seed_sd")


def _seed_spread(stats: pd.DataFrame, by: Sequence[str], keys: Sequence[str], col: str) -> pd.DataFrame:
    """``by`` columns plus ``n_seeds`` and ``seed_sd``: the cell's value ``col`` from the k-th training seed
    of every run (``keys``: the run's columns; runs averaged equally, as in the pooled cell; a run with
    fewer seeds, e.g. the untrained ``zero_shot`` with one, contributes its seed mean to every k), and its
    SD over k (ddof=1; NaN when no run of the cell has two seeds)."""
    by = list(by)
    if SEED_KEY not in keys or SEED_KEY in by:
        frame = stats[by].drop_duplicates() if by else pd.DataFrame(index=[0])
        return frame.assign(n_seeds=1, seed_sd=np.nan)
    runs = [c for c in keys if c != SEED_KEY]
    k = stats.groupby(runs, sort=True, dropna=False)[SEED_KEY].rank(method="dense").astype("int64") - 1
    wide = stats.assign(_k=k).groupby([*runs, "_k"], sort=True, dropna=False)[col].mean().unstack("_k")
    n_seeds = wide.notna().sum(axis=1).rename("n_seeds")
    filled = wide.apply(lambda row: row.fillna(row.mean()), axis=1)  # fewer seeds: the run's own mean
    if not by:
        n = int(n_seeds.max())
        sd = filled.mean(axis=0).std(ddof=1) if n > 1 else np.nan
        return pd.DataFrame({"n_seeds": [n], "seed_sd": [sd]})
    grouped = pd.concat([filled, n_seeds], axis=1).reset_index().groupby(by, sort=True, dropna=False)
    n = grouped["n_seeds"].max()
    sd = grouped[list(filled.columns)].mean().std(axis=1, ddof=1).where(n > 1)  # one seed: no SD
    return pd.DataFrame({"n_seeds": n, "seed_sd": sd}).reset_index()


def _excluded_counts(obs: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """``by`` columns plus :data:`EXCLUDED` counts of the rows flagged in ``obs['excluded']``."""
    flags = obs["excluded"] if "excluded" in obs.columns else pd.Series("", index=obs.index)
    counts = pd.DataFrame(
        {
            "n_out_of_band": (flags == "out_of_band").astype("int64"),
            "n_unreachable": (flags == "unreachable").astype("int64"),
        }
    )
    if not by:
        return counts.sum().to_frame().T
    return (
        pd.concat([obs[list(by)], counts], axis=1)
        .groupby(list(by), sort=True, dropna=False)
        .sum()
        .reset_index()
    )


def spread_across_runs(
    obs: pd.DataFrame, by: Sequence[str], unit_keys: Sequence[str], value: str = "value"
) -> pd.DataFrame:
    """Standard deviation across runs of the run means (the error bars of "dataset sensitivity").

    Returns ``by`` columns plus ``std_runs`` (ddof=1; NaN for a single run).
    """
    keep = [*dict.fromkeys([*unit_keys, *by])]
    per_level = obs.groupby([*keep, "perturbation", "level"], sort=True)[value].mean()
    per_type = per_level.groupby([*keep, "perturbation"], sort=True).mean()
    per_run = per_type.groupby(keep, sort=True).mean().reset_index()
    return per_run.groupby(list(by), sort=True)[value].std(ddof=1).rename("std_runs").reset_index()
