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
        train_seed=p.train_seed,
        dataset=p.dataset,
        settings=p.settings,
        test_shard=smk.input.test,
        finetuned=smk.input.finetuned[0] if smk.input.finetuned else None,
        perturbed=dict(zip(p.perturbations, smk.input.shards, strict=True)),
        outputs=dict(smk.output.items()),
        attack=p.get("attack"),
    )


run_snakemake_script(snakemake, main)
