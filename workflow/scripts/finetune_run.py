"""Snakemake adapter (rule finetune): fine-tune one strategy of one model with one training seed on one
dataset."""

from medfm_robust.seeding import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same float kernels on every x86-64 CPU (seeding.py)

import torch

from medfm_robust.logs import run_snakemake_script
from medfm_robust.seg.finetune import finetune_run


def main(smk) -> None:
    torch.set_num_threads(smk.threads)
    s = smk.params.settings
    finetune_run(
        model_name=smk.params.model,
        base_checkpoint=s["checkpoint"],
        dataset=smk.wildcards.dataset,
        strategy=smk.wildcards.strategy,
        train_shard=smk.input.train,
        val_shard=smk.input.val,
        checkpoint_out=smk.output.checkpoint,
        log_csv=smk.output.history,
        curve_png=smk.output.curve,
        settings={"train": s["train"], "strategy": s["strategy"]},
        global_seed=s["seed"],
        train_seed=smk.params.train_seed,
        device=s["device"],
        keep_state=s["keep_state"],
    )


run_snakemake_script(snakemake, main)
