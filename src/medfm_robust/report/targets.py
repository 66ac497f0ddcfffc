"""Which files the report stage reads and writes, derived from the other stages' final targets.

``rules/report.smk`` builds one :class:`ReportTargets` from the target functions the earlier rule files
appended to ``STAGE_TARGETS``; the metric files, checkpoint sidecars and contact sheets are recognised by
the path contracts of ``docs/ARCHITECTURE.md``, so the report needs no copy of the other stages' config
logic.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from medfm_robust.report.build import SEG_TABLES, VLM_TABLES
from medfm_robust.report.figures import SEG_PANELS, vlm_panel_names

# groups: model, strategy, training seed, dataset, name
SEG_METRIC = re.compile(r"^results/metrics/segmentation/([^/]+)/([^/]+)/seed(\d+)/([^/]+)/([^/]+)\.parquet$")
VLM_METRIC = re.compile(r"^results/metrics/vlm/([^/]+)/([^/]+)/([^/]+)/([^/]+)\.parquet$")
# groups: model, dataset, strategy, training seed, extension
CHECKPOINT = re.compile(r"^results/checkpoints/([^/]+)/([^/]+)/([^/]+)/seed(\d+)\.(safetensors|json)$")
CONTACT_SHEET = re.compile(r"^results/figures/contact_sheets/([^/]+)\.png$")
SEG_FIGURE_CATEGORY = "Segmentation figures"
VLM_FIGURE_CATEGORY = "VLM figures"


class ReportTargets:
    """Input and output lists of the report rules.

    Args:
        stages: the other stages' target functions (each returns an iterable of paths); they are called
            lazily and their union is cached.
    """

    def __init__(self, stages: Sequence[Callable[[], Iterable[Any]]]) -> None:
        self._stages = list(stages)
        self._cache: list[str] | None = None

    def upstream(self) -> list[str]:
        """Final targets of the other stages, as sorted unique path strings."""
        if self._cache is None:
            self._cache = sorted({str(t) for stage in self._stages for t in stage()})
        return self._cache

    def seg_metric_files(self) -> list[str]:
        """Every segmentation metric Parquet file the configuration implies."""
        return [t for t in self.upstream() if SEG_METRIC.match(t)]

    def vlm_metric_files(self) -> list[str]:
        """Every VLM metric Parquet file the configuration implies."""
        return [t for t in self.upstream() if VLM_METRIC.match(t)]

    def checkpoint_sidecars(self) -> list[str]:
        """JSON sidecars of the fine-tuned checkpoints.

        Those the fine-tuning stage lists (a listed ``.safetensors`` implies its ``.json``); if it lists
        none, one per evaluated (model, strategy, seed, dataset) run whose strategy is not ``zero_shot``.
        """
        listed = {
            CHECKPOINT.sub(r"results/checkpoints/\1/\2/\3/seed\4.json", t)
            for t in self.upstream()
            if CHECKPOINT.match(t)
        }
        if listed:
            return sorted(listed)
        runs = {SEG_METRIC.match(t).groups()[:4] for t in self.seg_metric_files()}  # type: ignore[union-attr]
        return sorted(
            f"results/checkpoints/{m}/{d}/{s}/seed{k}.json" for m, s, k, d in runs if s != "zero_shot"
        )

    def contact_sheet_modalities(self) -> list[str]:
        """Modalities whose perturbation contact sheet the perturbation stage produces."""
        return sorted({m.group(1) for t in self.upstream() if (m := CONTACT_SHEET.match(t))})

    def vlm_tasks(self) -> list[str]:
        """VLM tasks with metric files in this configuration."""
        return sorted({m.group(2) for t in self.vlm_metric_files() if (m := VLM_METRIC.match(t))})

    def vlm_panels(self) -> list[str]:
        """Figure 3 (g)-(l) panels for the tasks present."""
        return vlm_panel_names(self.vlm_tasks())

    def targets(self) -> list[str]:
        """The report stage's final targets: tables, figures and report copies of the contact sheets."""
        out: list[str] = []
        if self.seg_metric_files():
            out += [f"results/tables/{n}.{e}" for n in SEG_TABLES for e in ("csv", "md", "tex")]
            out += [f"results/figures/{n}.{e}" for n in SEG_PANELS for e in ("png", "pdf")]
        if self.vlm_metric_files():
            out += [f"results/tables/{n}.{e}" for n in VLM_TABLES for e in ("csv", "md", "tex")]
            out += [f"results/figures/{n}.{e}" for n in self.vlm_panels() for e in ("png", "pdf")]
        out += [f"results/report/contact_sheets/{m}.png" for m in self.contact_sheet_modalities()]
        return out


def table_outputs(names: Sequence[str], category: str, report: Callable[..., Any]) -> dict[str, list[Any]]:
    """Output lists of a table rule; the CSVs are wrapped with Snakemake's ``report`` (caption per table)."""
    return {
        "csv": [
            report(
                f"results/tables/{n}.csv",
                caption=f"../report/tables/{n}.rst",
                category=category,
                labels={"table": n},
            )
            for n in names
        ],
        "md": [f"results/tables/{n}.md" for n in names],
        "tex": [f"results/tables/{n}.tex" for n in names],
    }


def figure_outputs(names: Sequence[str], category: str, report: Callable[..., Any]) -> dict[str, list[Any]]:
    """Output lists of a figure rule; the PNGs are wrapped with ``report`` (caption per panel)."""
    return {
        "png": [
            report(
                f"results/figures/{n}.png",
                caption=f"../report/figures/{n}.rst",
                category=category,
                labels={"panel": n},
            )
            for n in names
        ],
        "pdf": [f"results/figures/{n}.pdf" for n in names],
    }


def contact_sheet_outputs(modalities: Sequence[str], report: Callable[..., Any]) -> list[Any]:
    """Report copies of the perturbation contact sheets (one per modality)."""
    return [
        report(
            f"results/report/contact_sheets/{m}.png",
            caption="../report/contact_sheet.rst",
            category="Perturbations",
            labels={"modality": m},
        )
        for m in modalities
    ]
