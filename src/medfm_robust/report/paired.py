"""Paired comparisons between fine-tuning strategies on the same images (table, forest plot, sentences).

For every (model, dataset) and every pair of strategies ``(A, B)`` (A before B in the paper's order), the
per-observation difference ``drop_A - drop_B`` is formed on the *same* image, perturbation and level
(training seeds are averaged first, per strategy, when a ``train_seed`` column exists; without it there
is one seed). A positive difference means A degrades more than B. The differences are aggregated in the
hierarchy of :mod:`medfm_robust.report.aggregate` with its seeded image bootstrap: because the mean is
linear and the resampled image set is shared by every run of a dataset, the bootstrap of the difference
is the paired bootstrap of the two strategies' drops. Rows with ``dataset == "all"`` pool the datasets
(each dataset a run, weighted equally).

The paired test is the Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`) over images, on each
image's mean difference (over levels, then perturbation types); its p-values are corrected across the
pairs of one (model, dataset) block with Holm's step-down method or Benjamini-Hochberg. A pair with
fewer than ``min_images`` images gets neither an interval (see :class:`~medfm_robust.report.tables.Table`)
nor a test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from medfm_robust.errors import ConfigError
from medfm_robust.report import palette
from medfm_robust.report.aggregate import BootstrapSettings, hierarchical_mean
from medfm_robust.report.tables import Table, cells_from

PAIR_KEYS = ("model", "dataset", "strategy_a", "strategy_b")
ALL = "all"
SEED_KEY = "train_seed"
CORRECTIONS = ("holm", "bh")
TABLE_NAME = "paired_strategy_differences"
PANEL_NAME = "fig4_paired_differences"
PANEL_TITLE = "Paired strategy differences (A - B)"


def adjust_pvalues(p: Sequence[float], method: str = "holm") -> np.ndarray:
    """Multiplicity-adjusted p-values (float64, same order as ``p``; NaN entries stay NaN and are not
    counted in the family).

    ``holm``: Holm's step-down, ``p_(i) * (m - i + 1)`` made monotone and clipped to 1. ``bh``:
    Benjamini-Hochberg (:func:`scipy.stats.false_discovery_control`).
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if not ok.any():
        return out
    q = p[ok]
    if method == "bh":
        from scipy import stats as sps  # lazy: the workflow imports this module to plan its DAG

        out[ok] = sps.false_discovery_control(q, method="bh")
    elif method == "holm":
        order = np.argsort(q, kind="stable")
        m = len(q)
        stepped = np.maximum.accumulate(q[order] * (m - np.arange(m)))
        adj = np.empty(m)
        adj[order] = np.minimum(stepped, 1.0)
        out[ok] = adj
    else:
        raise ConfigError(
            f"report.paired_correction: unknown method {method!r} (one of {', '.join(CORRECTIONS)})"
        )
    return out


def wilcoxon_p(diffs: np.ndarray) -> tuple[float, float]:
    """``(statistic, two-sided p)`` of the Wilcoxon signed-rank test of per-image differences (float64,
    any length). All-zero differences give ``(0.0, 1.0)``; no differences give NaNs."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.size == 0:
        return float("nan"), float("nan")
    if not np.any(diffs != 0):
        return 0.0, 1.0
    from scipy import stats as sps  # lazy: the workflow imports this module to plan its DAG

    res = sps.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided")
    return float(res.statistic), float(res.pvalue)


def mean_over_seeds(drops: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Average ``value`` over ``train_seed`` per ``keys`` (returned unchanged without that column)."""
    if SEED_KEY not in drops.columns:
        return drops
    return drops.groupby(list(keys), sort=True, dropna=False)["value"].mean().reset_index()


def pair_differences(drops: pd.DataFrame) -> pd.DataFrame:
    """Per-observation differences of every strategy pair.

    Args:
        drops: rows of :func:`~medfm_robust.report.aggregate.paired_drops` (drop renamed to ``value``)
            with ``model``, ``strategy``, ``dataset``, ``image_id``, ``perturbation``, ``level`` and
            optionally ``train_seed``; NaN values (excluded outputs) are left out.

    Returns:
        :data:`PAIR_KEYS`, ``image_id``, ``perturbation``, ``level`` and ``value = drop_A - drop_B``
        (float64) for the observations both strategies have.
    """
    obs = ["image_id", "perturbation", "level"]
    data = mean_over_seeds(drops, ["model", "strategy", "dataset", *obs])
    data = data.loc[data["value"].notna(), ["model", "strategy", "dataset", *obs, "value"]]
    frames = []
    for (model, dataset), rows in data.groupby(["model", "dataset"], sort=True):
        per = {s: r[[*obs, "value"]] for s, r in rows.groupby("strategy", sort=True)}
        order = sorted(per, key=palette.strategy_sort_key)
        for i, a in enumerate(order):
            for b in order[i + 1 :]:
                both = per[a].merge(per[b], on=obs, suffixes=("_a", "_b"), validate="one_to_one")
                frames.append(
                    both[obs].assign(
                        model=model,
                        dataset=dataset,
                        strategy_a=a,
                        strategy_b=b,
                        value=both["value_a"] - both["value_b"],
                    )
                )
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in (*PAIR_KEYS, *obs)}).assign(
            value=pd.Series(dtype="float64")
        )
    return pd.concat(frames, ignore_index=True)[[*PAIR_KEYS, *obs, "value"]]


def _image_means(diff: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Each image's mean difference (over levels, then types) per ``by`` + (dataset, image)."""
    keys = [*dict.fromkeys([*by, "dataset", "image_id"])]
    per_type = diff.groupby([*keys, "perturbation"], sort=True)["value"].mean()
    return per_type.groupby(keys, sort=True).mean().reset_index()


def paired_statistics(
    drops: pd.DataFrame,
    settings: BootstrapSettings,
    correction: str = "holm",
    alpha: float = 0.05,
    min_images: int = 10,
) -> pd.DataFrame:
    """Paired differences per (model, dataset, pair) and pooled over datasets (``dataset == "all"``).

    Returns:
        :data:`PAIR_KEYS`, ``mean``, ``ci_low``, ``ci_high``, ``n``, ``n_images``, ``n_runs`` (as
        :func:`~medfm_robust.report.aggregate.hierarchical_mean`), ``statistic`` and ``p_value`` of the
        Wilcoxon test (NaN under ``min_images`` images), ``p_adjusted`` (corrected within each
        (model, dataset) block) and ``significant`` (``"yes"`` when ``p_adjusted < alpha``, else ``""``).
    """
    if correction not in CORRECTIONS:
        adjust_pvalues([], correction)  # raises the ConfigError
    diff = pair_differences(drops)
    pooled_by = ["model", "strategy_a", "strategy_b"]
    out = []
    for by in (list(PAIR_KEYS), pooled_by):
        cells = hierarchical_mean(diff, by, PAIR_KEYS, ["dataset"], settings)
        if cells.empty:
            continue
        tests = []
        for key, rows in _image_means(diff, by).groupby(by, sort=True):
            enough = len(rows) >= min_images
            stat, p = wilcoxon_p(rows["value"].to_numpy()) if enough else (np.nan, np.nan)
            tests.append((*key, stat, p))
        cells = cells.merge(pd.DataFrame(tests, columns=[*by, "statistic", "p_value"]), on=by, how="left")
        if "dataset" not in by:
            cells.insert(1, "dataset", ALL)
        out.append(cells)
    if not out:
        cols = [*PAIR_KEYS, "mean", "ci_low", "ci_high", "n", "n_images", "n_runs", "statistic", "p_value"]
        return pd.DataFrame(columns=[*cols, "p_adjusted", "significant"])
    res = pd.concat(out, ignore_index=True)
    res["p_adjusted"] = np.nan
    for _, rows in res.groupby(["model", "dataset"], sort=True):
        res.loc[rows.index, "p_adjusted"] = adjust_pvalues(rows["p_value"].to_numpy(), correction)
    res["significant"] = np.where(res["p_adjusted"] < alpha, "yes", "")
    order = res["dataset"].eq(ALL).map(int)  # per-dataset blocks first, the pooled rows last
    res = res.assign(_o=order).sort_values(
        ["model", "_o", "dataset", "strategy_a", "strategy_b"],
        key=lambda s: s.map(palette.strategy_sort_key) if s.name.startswith("strategy") else s,
    )
    return res.drop(columns="_o").reset_index(drop=True)


def _where(dataset: str) -> str:
    return "all datasets" if dataset == ALL else dataset


def significance_sentences(res: pd.DataFrame, metric: str, correction: str, alpha: float) -> list[str]:
    """Report sentences naming the significant differences (and counting the others)."""
    name = {"holm": "Holm", "bh": "Benjamini-Hochberg"}[correction]
    tested = res[res["p_adjusted"].notna()]
    sig = tested[tested["significant"] == "yes"]
    lines = [
        f"Paired differences A - B in mean {metric} drop (positive: A degrades more); Wilcoxon signed-rank "
        f"test over images, {name}-corrected within each model x dataset block, significant at "
        f"p_adj < {alpha:g}: {len(sig)} of {len(tested)} tested pairs."
    ]
    for r in sig.itertuples(index=False):
        more, less = (r.strategy_a, r.strategy_b) if r.mean > 0 else (r.strategy_b, r.strategy_a)
        ci = "" if pd.isna(r.ci_low) else f" [{abs(r.ci_low):.3f}, {abs(r.ci_high):.3f}]"
        if r.mean < 0 and ci:
            ci = f" [{-r.ci_high:.3f}, {-r.ci_low:.3f}]"
        lines.append(
            f"- {palette.label(r.model)} on {_where(r.dataset)}: {palette.label(more)} degrades more than "
            f"{palette.label(less)} by {abs(r.mean):.3f}{ci} {metric} (p_adj = {r.p_adjusted:.2g}, "
            f"{r.n_images} images)."
        )
    untested = len(res) - len(tested)
    if untested:
        lines.append(f"{untested} pair(s) had too few images for a test (no interval, no p-value).")
    return lines


def paired_table(
    drops: pd.DataFrame,
    settings: BootstrapSettings,
    metric: str = "IoU",
    correction: str = "holm",
    alpha: float = 0.05,
    min_images: int = 10,
) -> Table:
    """The paired-comparison table (:data:`TABLE_NAME`); its notes are the significance sentences."""
    res = paired_statistics(drops, settings, correction, alpha, min_images)
    column = f"{metric} drop A - B"
    extra = res[[*PAIR_KEYS, "n_images", "statistic", "p_value", "p_adjusted", "significant"]].rename(
        columns={"n_images": "images", "statistic": "W", "p_value": "p", "p_adjusted": "p_adj"}
    )
    pfmt = lambda v: "–" if v is None or pd.isna(v) else f"{float(v):.2g}"  # noqa: E731
    return Table(
        TABLE_NAME,
        f"Paired differences between strategies in mean {metric} drop (same images, perturbations, levels)",
        list(PAIR_KEYS),
        cells_from(res, list(PAIR_KEYS), column) if len(res) else _no_cells(),
        [column],
        rows=res[list(PAIR_KEYS)],
        extra=extra,
        formatters={"W": lambda v: "–" if pd.isna(v) else f"{float(v):g}", "p": pfmt, "p_adj": pfmt},
        notes=significance_sentences(res, metric, correction, alpha),
    )


def _no_cells() -> pd.DataFrame:
    """Empty cells with numeric dtypes (so that the long cells of all tables keep float columns)."""
    cols = {k: pd.Series(dtype=object) for k in (*PAIR_KEYS, "column")}
    nums = {k: pd.Series(dtype="float64") for k in ("mean", "ci_low", "ci_high")}
    return pd.DataFrame({**cols, **nums, "n": pd.Series(dtype="int64")})


def panel_paired_differences(cells: pd.DataFrame, source: str, metric: str = "IoU"):
    """Forest plot of the pooled (all datasets) differences per model and pair, 95% CIs; filled markers
    are significant after correction, hollow ones are not."""
    from medfm_robust.report.figures import SEG_PANELS, _empty, _plt, _table

    plt = _plt()
    t = _table(cells, TABLE_NAME, source) if (cells["table"] == TABLE_NAME).any() else cells.iloc[:0]
    t = t[t["dataset"].astype(str) == ALL] if len(t) else t
    fig, ax = plt.subplots(figsize=(6.0, 0.32 * max(len(t), 4) + 1.6))
    if t.empty:
        _empty(ax, "no strategy pairs in this configuration")
    else:
        t = t.iloc[::-1].reset_index(drop=True)
        for i, r in t.iterrows():
            color = palette.model_color(str(r["model"]))
            sig = str(r.get("significant", "")) == "yes"
            if pd.notna(r["ci_low"]):
                ax.plot([r["ci_low"], r["ci_high"]], [i, i], color=color, lw=1.5)
            ax.plot(r["mean"], i, "o", ms=6, color=color, mfc=color if sig else "white", mew=1.5)
        lab = lambda v: palette.label(str(v))  # noqa: E731
        rows = t.itertuples(index=False)
        labels = [f"{lab(r.model)}: {lab(r.strategy_a)} - {lab(r.strategy_b)}" for r in rows]
        ax.set_yticks(np.arange(len(t)), labels)
        ax.axvline(0.0, color="0.4", lw=1, ls="--")
        ax.set_xlabel(f"Difference in mean {metric} drop (A - B)\nfilled marker: significant (corrected)")
        ax.grid(alpha=0.3, axis="x")
    ax.set_title(SEG_PANELS.get(PANEL_NAME, PANEL_TITLE))
    return fig
