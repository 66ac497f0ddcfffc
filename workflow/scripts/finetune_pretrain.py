"""Snakemake adapter: pretrain the workflow's tiny SAM on the configured datasets (rule pretrain_tiny_sam)."""

from medfm_robust.seeding import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same float kernels on every x86-64 CPU (seeding.py)

import torch

from medfm_robust.logs import run_snakemake_script
from medfm_robust.seg.pretrain import pretrain_tiny_sam


def main(smk) -> None:
    torch.set_num_threads(smk.threads)
    pretrain_tiny_sam(
        datasets=list(smk.params.datasets),
        train_shards=list(smk.input.train),
        val_shards=list(smk.input.val),
        checkpoint_out=smk.output.checkpoint,
        log_csv=smk.output.history,
        curve_png=smk.output.curve,
        settings=smk.params.settings,
        global_seed=smk.params.seed,
        device=smk.params.device,
    )


run_snakemake_script(snakemake, main)
