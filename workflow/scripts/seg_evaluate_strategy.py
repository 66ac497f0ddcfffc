"""Snakemake adapter (rules segment_evaluate_<model> of one_job_per: strategy models): every dataset of one
(model, strategy, training seed), clean + perturbations + FGSM/PGD, in one job."""

from medfm_robust.seeding import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same float kernels on every x86-64 CPU (seeding.py)

from medfm_robust.logs import run_snakemake_script
from medfm_robust.seg.evaluate import run_strategy_job


def main(smk) -> None:
    run_strategy_job(
        model=smk.params.model,
        strategy=smk.wildcards.strategy,
        plan=smk.params.plan,
        settings=smk.params.settings,
        attack=smk.params.attack,
        train_seed=smk.params.train_seed,
    )


run_snakemake_script(snakemake, main)
