"""Snakemake adapter (rule vlm_samples): one VLM sample table (dataset x task)."""

from medfm_robust.seeding import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same float kernels on every x86-64 CPU (seeding.py)

from medfm_robust.logs import run_snakemake_script
from medfm_robust.vlm.datasets import build_and_write


def main(smk) -> None:
    p = smk.params
    build_and_write(
        smk.output[0],
        smk.wildcards.vlm_dataset,
        p.spec,
        smk.wildcards.task,
        sampling=p.sampling,
        seed=p.seed,
        shards=list(smk.input) if p.spec["adapter"] == "demo" else [],
        resources_dir=p.resources_dir,
    )


run_snakemake_script(snakemake, main)
