"""Snakemake adapter (rule perturb_generate): one dataset's canonical test shard -> its SSIM-calibrated
perturbed shard of one type."""

import pandas as pd

from medfm_robust.logs import run_snakemake_script
from medfm_robust.perturb.table import perturb_table, select_images, write_perturbed_shard


def main(smk) -> None:
    s = smk.params.settings
    df = select_images(pd.read_parquet(smk.input[0]), s["max_images"], s["seed"])
    shard = perturb_table(
        df,
        smk.params.perturbation,
        levels=s["levels"],
        global_seed=s["seed"],
        bands=s["bands"],
        param_range=s["param_range"],
        max_evals=s["max_evals"],
        options=s["options"],
    )
    write_perturbed_shard(smk.output[0], shard)


run_snakemake_script(snakemake, main)
