"""Snakemake adapter (rule segment_evaluate): the metrics Parquet of one (model, strategy, training seed,
dataset): clean, every perturbation and, for attacked models, FGSM and PGD."""

from medfm_robust.seeding import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same float kernels on every x86-64 CPU (seeding.py)

from medfm_robust.logs import run_snakemake_script
from medfm_robust.seg.evaluate import run_evaluation_job


def main(smk) -> None:
    p = smk.params
    run_evaluation_job(
        model=p.model,
        strategy=smk.wildcards.strategy,
        item=p.plan,
        settings=p.settings,
        attack=p.attack,
        train_seed=p.train_seed,
    )


run_snakemake_script(snakemake, main)
