"""Snakemake adapter (rules vlm_evaluate, vlm_evaluate_api): every condition of one (model, task, dataset)."""

from medfm_robust.seeding import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same float kernels on every x86-64 CPU (seeding.py)

from medfm_robust.logs import run_snakemake_script
from medfm_robust.vlm.models import set_torch_threads
from medfm_robust.vlm.run import run_evaluation_job


def main(smk) -> None:
    s = smk.params.settings
    perturbed = dict(zip(s["types"], smk.input.perturbed, strict=True))
    set_torch_threads(smk.threads)
    run_evaluation_job(
        model_name=smk.wildcards.vlm_model,
        spec=s["spec"],
        task=smk.wildcards.task,
        samples=smk.input.samples,
        shards={t: [perturbed[t], *s["canonical"][t]] for t in s["types"]},
        outputs=dict(smk.output.items()),
        max_new_tokens=s["max_new_tokens"],
        levels=s["levels"],
        include=s["include"],
        exclude=s["exclude"],
        model_dir=smk.input.get("model") or None,
        adapter_dir=smk.input.get("adapter"),
        resources_dir=s["resources_dir"],
        api_settings=smk.params.get("api"),
        scoring=s["scoring"],
        controls=s["controls"],
        prompt=s["prompt"],
    )


run_snakemake_script(snakemake, main)
