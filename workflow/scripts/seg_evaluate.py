"""Snakemake adapter (rules segment_evaluate_* and segment_attack): metrics of one (model, strategy,
training seed, dataset).

Without ``params.attack`` it writes clean + one Parquet per perturbation; with it, fgsm + pgd.
"""

from medfm_robust.seeding import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same float kernels on every x86-64 CPU (seeding.py)

from medfm_robust.logs import run_snakemake_script
from medfm_robust.seg.evaluate import run_evaluation_job


def main(smk) -> None:
    p = smk.params
    run_evaluation_job(
        model=p.model,
        strategy=smk.wildcards.strategy,
        item=p.plan[0],
        settings=p.settings,
        attack=p.get("attack"),
        train_seed=p.train_seed,
    )


run_snakemake_script(snakemake, main)
