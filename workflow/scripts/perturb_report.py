"""Snakemake adapter: a dataset's perturbed shards -> calibration report CSV + JSON (rule perturb_report)."""

from medfm_robust.logs import run_snakemake_script
from medfm_robust.perturb.table import write_calibration_report


def main(smk) -> None:
    write_calibration_report(list(smk.input), smk.output.csv, smk.output.json, dataset=smk.wildcards.dataset)


run_snakemake_script(snakemake, main)
