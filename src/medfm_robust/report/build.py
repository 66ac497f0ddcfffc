"""Build the paper's segmentation and VLM tables from the per-image metric Parquet files (the table rules'
entry point :func:`run_tables`).

Segmentation tables (``SEG_TABLES``, :mod:`medfm_robust.report.build_seg`) and VLM tables (``VLM_TABLES``,
:mod:`medfm_robust.report.build_vlm`) are lists of file stems; each is written as ``<stem>.csv``,
``<stem>.md`` and ``<stem>.tex`` (``paths.table``). The long cells of all tables go to
``<kind>_cells.parquet`` for the figures.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from medfm_robust.io import write_parquet_atomic
from medfm_robust.report.aggregate import BootstrapSettings
from medfm_robust.report.build_seg import SEG_TABLES, read_sidecars, segmentation_tables
from medfm_robust.report.build_vlm import VLM_TABLES, vlm_tables
from medfm_robust.report.scores import statistics_tables
from medfm_robust.report.tables import Table, long_cells, write_table

log = logging.getLogger(__name__)

__all__ = ["SEG_TABLES", "VLM_TABLES", "read_sidecars", "run_tables", "segmentation_tables", "vlm_tables",
           "write_tables"]


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
    """Entry point of the table rules: ``kind`` is ``segmentation`` or ``vlm``; ``params``: the validated
    ``report`` config (schema defaults filled in) plus the workflow's ``seed``."""
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
    min_n = int(params["min_cell_n"])
    tables = [replace(t, min_images=min_n) for t in tables]
    log.info("%s: %d tables from %d metric files", kind, len(tables), len(metric_paths))
    return write_tables(tables, out_dir, cells_path)
