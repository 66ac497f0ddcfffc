"""The panels of the paper's Figure 3, drawn from the long table cells (``*_cells.parquet``).

Every panel is written as PNG and PDF (atomically) at ``paths.figure``; colours come from
:mod:`medfm_robust.report.palette` so a strategy or model has the same colour in every panel.
Error bars are the 95% bootstrap confidence intervals of the tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medfm_robust.errors import DataError
from medfm_robust.io import atomic_path
from medfm_robust.report import palette
from medfm_robust.report.paired import PANEL_NAME as PAIRED_PANEL
from medfm_robust.report.paired import PANEL_TITLE as PAIRED_TITLE
from medfm_robust.report.paired import panel_paired_differences

log = logging.getLogger(__name__)
logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting is chatty at INFO

SEG_PANELS = {
    "fig3a_performance_robustness": "(a) Clean IoU vs IoU drop",
    "fig3b_strategy_ranking": "(b) Strategy ranking",
    "fig3c_model_comparison": "(c) Model comparison",
    "fig3d_dataset_sensitivity": "(d) Dataset sensitivity",
    "fig3e_top_perturbations": "(e) Most damaging perturbations",
    "fig3f_severity": "(f) Drop vs severity level",
    PAIRED_PANEL: PAIRED_TITLE,  # issue 15 (report/paired.py)
}
#: VLM panels per task: (clean vs perturbed panel, per-perturbation panel).
VLM_PANELS = {
    "vqa": ("fig3g_vqa_clean_vs_perturbed", "fig3j_vqa_perturbations"),
    "grounding": ("fig3h_grounding_clean_vs_perturbed", "fig3k_grounding_perturbations"),
    "caption": ("fig3i_caption_clean_vs_perturbed", "fig3l_caption_perturbations"),
}


def vlm_panel_names(tasks: Sequence[str]) -> list[str]:
    """File stems of the VLM panels for the given tasks (unknown tasks get none)."""
    return [name for t in sorted(tasks) if t in VLM_PANELS for name in VLM_PANELS[t]]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 8,
            "svg.hashsalt": "medfm",
            "pdf.fonttype": 42,
        }
    )
    return plt


def save_figure(fig, stem: Path, dpi: int = 150) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically; returns both paths."""
    fig.tight_layout()
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        with atomic_path(path) as tmp:
            meta = {"CreationDate": None} if ext == "pdf" else {"Software": None}
            fig.savefig(tmp, format=ext, dpi=dpi, metadata=meta)
        paths.append(path)
    _plt().close(fig)
    return paths


def _table(cells: pd.DataFrame, name: str, source: str) -> pd.DataFrame:
    sub = cells[cells["table"] == name]
    if sub.empty:
        raise DataError(f"{source}: no cells of table '{name}'")
    return sub.copy()


def _yerr(frame: pd.DataFrame) -> np.ndarray | None:
    lo = (frame["mean"] - frame["ci_low"]).to_numpy(dtype=float)
    hi = (frame["ci_high"] - frame["mean"]).to_numpy(dtype=float)
    if np.all(np.isnan(lo)):
        return None
    return np.vstack([np.nan_to_num(lo), np.nan_to_num(hi)])


def _empty(ax, text: str = "no data in this configuration") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def panel_performance_robustness(cells: pd.DataFrame, source: str, metric: str = "IoU"):
    """(a) one point per (model, strategy): x = clean score, y = mean drop; colour strategy, marker model."""
    plt = _plt()
    t = _table(cells, "performance_robustness", source)
    clean = t[t["column"].str.startswith("clean")].set_index(["model", "strategy"])
    drop = t[t["column"].str.endswith("drop")].set_index(["model", "strategy"])
    both = (
        clean[["mean"]].join(drop[["mean", "ci_low", "ci_high"]], lsuffix="_clean", how="inner").reset_index()
    )
    markers = "osD^vP*X"
    models = sorted(both["model"].unique())
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for (model, strategy), row in both.groupby(["model", "strategy"]):
        r = row.iloc[0]
        err = (
            [[max(r["mean"] - r["ci_low"], 0)], [max(r["ci_high"] - r["mean"], 0)]]
            if pd.notna(r["ci_low"])
            else None
        )
        ax.errorbar(
            r["mean_clean"],
            r["mean"],
            yerr=err,
            fmt=markers[models.index(model) % len(markers)],
            color=palette.strategy_color(strategy),
            ms=8,
            capsize=3,
            label=f"{palette.label(model)} / {palette.label(strategy)}",
        )
    ax.set_xlabel(f"Clean {metric}")
    ax.set_ylabel(f"Mean {metric} drop")
    ax.set_title(SEG_PANELS["fig3a_performance_robustness"])
    ax.grid(alpha=0.3)
    ax.legend(loc="best", ncol=1 if len(both) <= 8 else 2)
    return fig


def _bar_panel(
    frame: pd.DataFrame,
    labels: Sequence[str],
    colors: Sequence[str],
    title: str,
    ylabel: str,
    horizontal: bool = False,
    figsize: tuple[float, float] = (5.5, 4.0),
):
    plt = _plt()
    fig, ax = plt.subplots(figsize=figsize)
    if frame.empty:
        _empty(ax)
    elif horizontal:
        pos = np.arange(len(frame))[::-1]
        err = _yerr(frame)
        ax.barh(pos, frame["mean"], xerr=err, color=colors, capsize=3)
        ax.set_yticks(pos, labels)
        ax.set_xlabel(ylabel)
    else:
        pos = np.arange(len(frame))
        ax.bar(pos, frame["mean"], yerr=_yerr(frame), color=colors, capsize=3)
        ax.set_xticks(pos, labels, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x" if horizontal else "y")
    return fig


def panel_strategy_ranking(cells: pd.DataFrame, source: str, metric: str = "IoU"):
    """(b) bars of the mean drop per strategy, best (smallest drop) first, with 95% CIs."""
    t = _table(cells, "strategy_ranking", source).sort_values(["mean", "strategy"])
    return _bar_panel(
        t,
        [palette.label(s) for s in t["strategy"]],
        [palette.strategy_color(s) for s in t["strategy"]],
        SEG_PANELS["fig3b_strategy_ranking"],
        f"Mean {metric} drop",
    )


def panel_model_comparison(cells: pd.DataFrame, source: str, metric: str = "IoU"):
    """(c) grouped bars: per strategy, one bar per model (model colours)."""
    plt = _plt()
    t = _table(cells, "model_comparison", source)
    strategies = sorted(t["strategy"].unique(), key=palette.strategy_sort_key)
    models = sorted(t["column"].unique())
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        sub = t[t["column"] == model].set_index("strategy").reindex(strategies)
        pos = np.arange(len(strategies)) + (i - (len(models) - 1) / 2) * width
        ax.bar(
            pos,
            sub["mean"],
            width,
            yerr=_yerr(sub),
            color=palette.model_color(model),
            capsize=2,
            label=palette.label(model),
        )
    ax.set_xticks(np.arange(len(strategies)), [palette.label(s) for s in strategies], rotation=30, ha="right")
    ax.set_ylabel(f"Mean {metric} drop")
    ax.set_title(SEG_PANELS["fig3c_model_comparison"])
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return fig


def panel_dataset_sensitivity(cells: pd.DataFrame, source: str, metric: str = "IoU"):
    """(d) mean drop per dataset (smallest first) with 95% CIs."""
    t = _table(cells, "dataset_sensitivity", source).sort_values(["mean", "dataset"])
    return _bar_panel(
        t,
        list(t["dataset"]),
        ["#4c72b0"] * len(t),
        SEG_PANELS["fig3d_dataset_sensitivity"],
        f"Mean {metric} drop",
    )


def panel_top_perturbations(cells: pd.DataFrame, source: str, metric: str = "IoU"):
    """(e) horizontal bars of the most damaging perturbations, coloured base vs medical-specific."""
    plt = _plt()
    t = _table(cells, "top_perturbations", source).sort_values(
        ["mean", "perturbation"], ascending=[False, True]
    )
    fig = _bar_panel(
        t,
        [p.replace("_", " ") for p in t["perturbation"]],
        [palette.category_color(c) for c in t["category"]],
        SEG_PANELS["fig3e_top_perturbations"],
        f"Mean {metric} drop",
        horizontal=True,
        figsize=(5.5, 0.3 * len(t) + 1.5),
    )
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette.category_color(c)) for c in ("base", "medical")]
    fig.axes[0].legend(handles, ["base", "medical-specific"], loc="lower right")
    return fig


def panel_severity(cells: pd.DataFrame, source: str, metric: str = "IoU"):
    """(f) mean drop vs severity level, one line per strategy."""
    plt = _plt()
    t = _table(cells, "severity_levels", source)
    t["level"] = t["column"].str.lstrip("L").astype(int)
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for strategy in sorted(t["strategy"].unique(), key=palette.strategy_sort_key):
        sub = t[t["strategy"] == strategy].sort_values("level")
        ax.errorbar(
            sub["level"],
            sub["mean"],
            yerr=_yerr(sub),
            marker="o",
            capsize=3,
            color=palette.strategy_color(strategy),
            label=palette.label(strategy),
        )
    ax.set_xticks(sorted(t["level"].unique()))
    ax.set_xlabel("Severity level")
    ax.set_ylabel(f"Mean {metric} drop")
    ax.set_title(SEG_PANELS["fig3f_severity"])
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


SEG_PANEL_FUNCS: dict[str, Callable] = {
    "fig3a_performance_robustness": panel_performance_robustness,
    "fig3b_strategy_ranking": panel_strategy_ranking,
    "fig3c_model_comparison": panel_model_comparison,
    "fig3d_dataset_sensitivity": panel_dataset_sensitivity,
    "fig3e_top_perturbations": panel_top_perturbations,
    "fig3f_severity": panel_severity,
    PAIRED_PANEL: panel_paired_differences,  # issue 15 (report/paired.py)
}


def panel_vlm_clean_vs_perturbed(cells: pd.DataFrame, task: str, source: str):
    """(g-i) per model: clean, perturbed and (when run) blank-image score side by side (95% CIs)."""
    plt = _plt()
    t = _table(cells, "vlm_clean_vs_perturbed", source)
    t = t[t["task"] == task]
    models = sorted(t["model"].unique())
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    metric = t["metric"].dropna().iloc[0] if "metric" in t and t["metric"].notna().any() else "score"
    kinds = [k for k in palette.CLEAN_PERTURBED_COLORS if (t["column"] == k).any()]
    width = 0.76 / max(len(kinds), 1)
    for i, kind in enumerate(kinds):
        sub = t[t["column"] == kind].set_index("model").reindex(models)
        pos = np.arange(len(models)) + (i - (len(kinds) - 1) / 2) * width
        ax.bar(
            pos,
            sub["mean"],
            width,
            yerr=_yerr(sub),
            capsize=3,
            label=kind,
            color=palette.CLEAN_PERTURBED_COLORS[kind],
            edgecolor=[palette.model_color(m) for m in models],
            linewidth=2,
        )
    ax.set_xticks(np.arange(len(models)), [palette.label(m) for m in models], rotation=20, ha="right")
    names = {"correct": "accuracy", "rouge_l": "ROUGE-L", "iou": "IoU", "hit": "Acc@IoU≥0.5",
             "cider": "CIDEr", "bleu4_corpus": "corpus BLEU-4", "bleu4": "BLEU-4"}
    ax.set_ylabel(f"{palette.label(task)} {names.get(metric, metric.upper())}")
    letter = {"vqa": "g", "grounding": "h", "caption": "i"}.get(task, "")
    ax.set_title(f"({letter}) {palette.label(task)}: clean vs perturbed")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return fig


def panel_vlm_perturbations(cells: pd.DataFrame, task: str, source: str):
    """(j-l) mean score drop per perturbation for one task (over models), coloured by category."""
    t = _table(cells, "vlm_perturbation_drop", source)
    t = t[t["column"] == task].sort_values(["mean", "perturbation"], ascending=[False, True])
    letter = {"vqa": "j", "grounding": "k", "caption": "l"}.get(task, "")
    return _bar_panel(
        t,
        [p.replace("_", " ") for p in t["perturbation"]],
        [palette.category_color(c) for c in t["category"]],
        f"({letter}) {palette.label(task)}: impact per perturbation",
        "Mean score drop",
        horizontal=True,
        figsize=(5.5, 0.3 * len(t) + 1.5),
    )


def draw_figures(
    kind: str, cells_path: str | Path, stems: Sequence[str | Path], dpi: int = 150, metric: str = "IoU"
) -> list[Path]:
    """Draw the panels named by the output ``stems`` (``.../<panel name>``) from a cells Parquet file."""
    cells = pd.read_parquet(cells_path)
    metric = palette.METRIC_LABELS.get(metric, metric)
    written: list[Path] = []
    for stem in map(Path, stems):
        name = stem.name
        if kind == "segmentation":
            if name not in SEG_PANEL_FUNCS:
                raise DataError(f"{stem}: unknown segmentation panel '{name}'")
            fig = SEG_PANEL_FUNCS[name](cells, str(cells_path), metric)
        else:
            match = [(t, i) for t, names in VLM_PANELS.items() for i, n in enumerate(names) if n == name]
            if not match:
                raise DataError(f"{stem}: unknown VLM panel '{name}'")
            task, which = match[0]
            func = panel_vlm_clean_vs_perturbed if which == 0 else panel_vlm_perturbations
            fig = func(cells, task, str(cells_path))
        written += save_figure(fig, stem, dpi)
        log.info("wrote %s.{png,pdf}", stem)
    return written
