"""Snakemake adapter (rule vlm_finetune_grounding): LoRA grounding adapter of one open model (resumable)."""

from medfm_robust.seeding import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same float kernels on every x86-64 CPU (seeding.py)

from medfm_robust.logs import run_snakemake_script
from medfm_robust.vlm.grounding_lora import finetune_grounding
from medfm_robust.vlm.models import box_convention, set_torch_threads


def main(smk) -> None:
    p = smk.params
    name = smk.wildcards.vlm_model
    set_torch_threads(smk.threads)
    finetune_grounding(
        name,
        p.spec,
        p.settings,
        base_dir=smk.input.model,
        samples_path=smk.input.samples,
        out_dir=smk.output.adapter,
        info_path=smk.output.info,
        state_path=p.state,
        convention=box_convention(name, p.spec),
        seed=p.seed,
    )


run_snakemake_script(snakemake, main)
