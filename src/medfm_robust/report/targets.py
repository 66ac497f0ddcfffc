"""Which files the report stage reads and writes.

``rules/report.smk`` builds one :class:`ReportTargets` from the validated config
(:meth:`ReportTargets.from_config`): the runs come from the other stages' run listings
(``seg.workflow.evaluated_runs``, ``seg.finetune_config.trained_runs``, ``vlm.workflow.evaluated_runs``,
``perturb.workflow.sheet_modalities``) and every path from :mod:`medfm_robust.paths`, so the report
neither copies the other stages' config logic nor parses paths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medfm_robust import paths
from medfm_robust.report.build import SEG_TABLES, VLM_TABLES
from medfm_robust.report.figures import SEG_PANELS, vlm_panel_names

SEG_FIGURE_CATEGORY = "Segmentation figures"
VLM_FIGURE_CATEGORY = "VLM figures"
SegRun = tuple[str, str, int, str]  # model, strategy, training seed, dataset
VlmRun = tuple[str, str, str]  # model, task, dataset
TrainedRun = tuple[str, str, str, int]  # model, dataset, strategy, training seed


@dataclass(frozen=True)
class ReportTargets:
    """Input and output lists of the report rules.

    Args:
        seg_runs: evaluated segmentation runs (one metrics Parquet each).
        vlm_metrics: evaluated VLM run -> its condition names.
        trained_runs: the fine-tuning stage's runs (their checkpoint sidecars feed the parameter counts).
        modalities: modalities with a perturbation contact sheet.
    """

    seg_runs: Sequence[SegRun]
    vlm_metrics: Mapping[VlmRun, Sequence[str]]
    trained_runs: Sequence[TrainedRun]
    modalities: Sequence[str]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ReportTargets:
        """The runs of the validated workflow ``config``, as the other stages list them."""
        from medfm_robust.perturb.workflow import sheet_modalities
        from medfm_robust.seg import workflow as seg_wf
        from medfm_robust.seg.finetune_config import trained_runs
        from medfm_robust.vlm import workflow as vlm_wf

        datasets = sorted(config["datasets"])
        seg_runs = seg_wf.evaluated_runs(config, seg_wf.finetune_strategies(config))
        conditions = vlm_wf.conditions(config)
        return cls(
            seg_runs=seg_runs,
            vlm_metrics={run: conditions for run in vlm_wf.evaluated_runs(config)},
            trained_runs=trained_runs(config, datasets),
            modalities=sheet_modalities(config, datasets),
        )

    def seg_metric_files(self) -> list[str]:
        """Every segmentation metric Parquet file (sorted)."""
        return sorted(paths.seg_metrics(*run) for run in self.seg_runs)

    def vlm_metric_files(self) -> list[str]:
        """Every VLM metric Parquet file (sorted)."""
        return sorted(paths.vlm_metrics(*run, n) for run, names in self.vlm_metrics.items() for n in names)

    def checkpoint_sidecars(self) -> list[str]:
        """JSON sidecars of the fine-tuned checkpoints (sorted).

        Those of the fine-tuning stage's runs; if it has none, one per evaluated (model, strategy, seed,
        dataset) run whose strategy is not ``zero_shot``.
        """
        if self.trained_runs:
            return sorted({paths.checkpoint_sidecar(*run) for run in self.trained_runs})
        return sorted(
            {paths.checkpoint_sidecar(m, d, s, k) for m, s, k, d in self.seg_runs if s != "zero_shot"}
        )

    def contact_sheet_modalities(self) -> list[str]:
        """Modalities whose perturbation contact sheet the perturbation stage produces (sorted)."""
        return sorted(self.modalities)

    def vlm_tasks(self) -> list[str]:
        """VLM tasks with metric files in this configuration."""
        return sorted({task for _, task, _ in self.vlm_metrics})

    def vlm_panels(self) -> list[str]:
        """Figure 3 (g)-(l) panels for the tasks present."""
        return vlm_panel_names(self.vlm_tasks())

    def targets(self) -> list[str]:
        """The report stage's final targets: tables, figures and report copies of the contact sheets."""
        out: list[str] = []
        if self.seg_runs:
            out += [paths.table(n, e) for n in SEG_TABLES for e in paths.TABLE_EXTS]
            out += [paths.figure(n, e) for n in SEG_PANELS for e in paths.FIGURE_EXTS]
        if self.vlm_metrics:
            out += [paths.table(n, e) for n in VLM_TABLES for e in paths.TABLE_EXTS]
            out += [paths.figure(n, e) for n in self.vlm_panels() for e in paths.FIGURE_EXTS]
        out += [paths.report_contact_sheet(m) for m in self.contact_sheet_modalities()]
        return out


def table_outputs(names: Sequence[str], category: str, report: Callable[..., Any]) -> dict[str, list[Any]]:
    """Output lists of a table rule; the CSVs are wrapped with Snakemake's ``report`` (caption per table)."""
    return {
        "csv": [
            report(
                paths.table(n, "csv"),
                caption=f"../report/tables/{n}.rst",
                category=category,
                labels={"table": n},
            )
            for n in names
        ],
        "md": [paths.table(n, "md") for n in names],
        "tex": [paths.table(n, "tex") for n in names],
    }


def figure_outputs(names: Sequence[str], category: str, report: Callable[..., Any]) -> dict[str, list[Any]]:
    """Output lists of a figure rule; the PNGs are wrapped with ``report`` (caption per panel)."""
    return {
        "png": [
            report(
                paths.figure(n, "png"),
                caption=f"../report/figures/{n}.rst",
                category=category,
                labels={"panel": n},
            )
            for n in names
        ],
        "pdf": [paths.figure(n, "pdf") for n in names],
    }


def contact_sheet_outputs(modalities: Sequence[str], report: Callable[..., Any]) -> list[Any]:
    """Report copies of the perturbation contact sheets (one per modality)."""
    return [
        report(
            paths.report_contact_sheet(m),
            caption="../report/contact_sheet.rst",
            category="Perturbations",
            labels={"modality": m},
        )
        for m in modalities
    ]
