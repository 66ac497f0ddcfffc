"""Snakemake adapter: fine-tune one strategy of one model with one training seed on one or more datasets
(rules finetune*)."""

from medfm_robust.seeding import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same float kernels on every x86-64 CPU (seeding.py)

import torch

from medfm_robust.logs import run_snakemake_script
from medfm_robust.seg.finetune import finetune_datasets


def _paths(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def main(smk) -> None:
    torch.set_num_threads(smk.threads)
    s = smk.params.settings
    finetune_datasets(
        model_name=smk.params.model,
        base_checkpoint=s["checkpoint"],
        strategy=smk.wildcards.strategy,
        datasets=list(smk.params.datasets),
        train_shards=_paths(smk.input.train),
        val_shards=_paths(smk.input.val),
        checkpoints=_paths(smk.output.checkpoint),
        log_csvs=_paths(smk.output.history),
        curve_pngs=_paths(smk.output.curve),
        settings={"train": s["train"], "strategy": s["strategy"]},
        global_seed=s["seed"],
        train_seed=smk.params.train_seed,
        device=s["device"],
        keep_state=s["keep_state"],
    )


run_snakemake_script(snakemake, main)
