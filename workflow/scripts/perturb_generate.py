"""Snakemake adapter: canonical test shard -> one SSIM-calibrated perturbed shard (rule perturb_generate)."""

import pandas as pd

from medfm_robust.logs import run_snakemake_script
from medfm_robust.perturb.table import perturb_table, select_images, write_perturbed_shard


def main(smk) -> None:
    s = smk.params.settings
    df = select_images(pd.read_parquet(smk.input[0]), s["max_images"], s["seed"])
    out = perturb_table(
        df,
        smk.wildcards.perturbation,
        levels=s["levels"],
        global_seed=s["seed"],
        bands=s["bands"],
        param_range=s["param_range"],
        max_evals=s["max_evals"],
    )
    write_perturbed_shard(smk.output[0], out)


run_snakemake_script(snakemake, main)
