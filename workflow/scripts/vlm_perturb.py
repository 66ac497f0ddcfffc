"""Snakemake adapter (rule vlm_perturb): every perturbed-input shard of one VLM dataset."""

from medfm_robust.seeding import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same float kernels on every x86-64 CPU (seeding.py)

from medfm_robust.logs import run_snakemake_script
from medfm_robust.vlm.perturb import perturb_vlm_dataset


def main(smk) -> None:
    s = smk.params.settings
    perturb_vlm_dataset(
        list(smk.input.samples),
        dict(zip(s["types"], smk.output, strict=True)),
        canonical_shards=s["canonical"],
        global_seed=s["seed"],
        levels=s["levels"],
        include=s["include"],
        exclude=s["exclude"],
        bands=s["bands"],
        max_evals=s["max_evals"],
        overrides=s["overrides"],
    )


run_snakemake_script(snakemake, main)
