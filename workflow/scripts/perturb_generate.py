"""Snakemake adapter: canonical test shard(s) -> SSIM-calibrated perturbed shard(s) of one type.

Rule perturb_generate: one dataset; rules perturb_generate_<type>: every dataset of that type (input i ->
output i)."""

import pandas as pd

from medfm_robust.logs import run_snakemake_script
from medfm_robust.perturb.table import perturb_table, select_images, write_perturbed_shard


def main(smk) -> None:
    s = smk.params.settings
    for test, out in zip(smk.input, smk.output, strict=True):
        df = select_images(pd.read_parquet(test), s["max_images"], s["seed"])
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
        write_perturbed_shard(out, shard)


run_snakemake_script(snakemake, main)
