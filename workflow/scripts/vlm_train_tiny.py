"""Snakemake adapter (rule vlm_train_tiny): build and train one tiny VLM on the demo training sets."""

from medfm_robust.seeding import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same float kernels on every x86-64 CPU (seeding.py)

from pathlib import Path

from medfm_robust.logs import run_snakemake_script
from medfm_robust.vlm.models import set_torch_threads
from medfm_robust.vlm.train import train_tiny_from_tables


def main(smk) -> None:
    p = smk.params
    set_torch_threads(smk.threads)
    train_tiny_from_tables(
        smk.wildcards.vlm_model,
        p.spec,
        p.training,
        {Path(t).stem: t for t in smk.input},
        smk.output.model,
        smk.output.info,
        max_new_tokens=p.max_new_tokens,
        seed=p.seed,
    )


run_snakemake_script(snakemake, main)
