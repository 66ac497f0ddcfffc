"""Snakemake adapter: per-image metric Parquet files -> the paper's tables (CSV, Markdown, LaTeX)."""

from pathlib import Path

from medfm_robust.logs import run_snakemake_script
from medfm_robust.report.build import run_tables


def main(smk) -> None:
    """Write every table of ``params.kind`` into the folder of the first CSV output."""
    run_tables(
        smk.params.kind,
        list(smk.input.metrics),
        Path(smk.output.csv[0]).parent,
        smk.output.cells,
        smk.params.settings,
        sidecar_paths=list(smk.input.sidecars),
    )


run_snakemake_script(snakemake, main)
