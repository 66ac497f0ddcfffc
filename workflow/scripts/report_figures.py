"""Snakemake adapter: table cells -> the Figure 3 panels (PNG + PDF)."""

from pathlib import Path

from medfm_robust.logs import run_snakemake_script
from medfm_robust.report.figures import draw_figures


def main(smk) -> None:
    """Draw one panel per PNG output (the PDF beside it is written too)."""
    stems = [Path(p).with_suffix("") for p in smk.output.png]
    draw_figures(smk.params.kind, smk.input.cells, stems, dpi=int(smk.params.dpi), metric=smk.params.metric)


run_snakemake_script(snakemake, main)
