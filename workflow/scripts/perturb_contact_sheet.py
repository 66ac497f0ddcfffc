"""Snakemake adapter: one modality's contact sheet PNG (rule perturb_contact_sheet)."""

from medfm_robust.logs import run_snakemake_script
from medfm_robust.perturb.contact import write_contact_sheet


def main(smk) -> None:
    write_contact_sheet(
        smk.input.test,
        list(smk.input.shards),
        smk.output[0],
        tile=smk.params.tile,
        title=f"{smk.wildcards.modality}: original, L1..L5 (SSIM; * = missed band, crossed = unreachable)",
    )


run_snakemake_script(snakemake, main)
