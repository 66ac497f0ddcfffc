# Segmentation stage: each configured model x strategy x training seed x dataset -> one per-image metric
# Parquet paths.seg_metrics(model, strategy, seed, dataset) with the rows of clean, every perturbation (all
# levels) and, for attacked models, FGSM and PGD (zero_shot: seed0 only). One job per (model, strategy,
# seed, dataset) (rule segment_evaluate, in job group "segment": a cluster profile batches short jobs into
# one submission with `group-components`, see docs/workflow.md "Job granularity"); each image goes through
# the encoder once. The strategies evaluated come from the finetune stage's settings
# (seg_wf.finetune_strategies), the seeds from finetune.seeds. Helpers: medfm_robust.seg.workflow.
from medfm_robust.errors import MedFMError
from medfm_robust.seg import workflow as seg_wf
from medfm_robust.seg.strategy_registry import STRATEGIES as SEG_STRATEGIES

SEG = config["segmentation"]

try:
    seg_wf.check_plans(config)  # a bad model setting stops here, with its config key
except MedFMError as exc:
    raise WorkflowError(str(exc)) from None


rule segment_evaluate:
    input:
        unpack(lambda wildcards: seg_wf.plan_inputs(seg_wf.wildcard_plan(config, wildcards))),
        base=lambda wildcards: seg_wf.base_checkpoint_input(config, wildcards.model),
    output:
        paths.seg_metrics(),
    log:
        paths.log("segment_evaluate", "{model}/{strategy}/seed{seed}/{dataset}"),
    wildcard_constraints:
        model="|".join(seg_wf.models(config)) or "NO_MODEL",
        strategy="|".join(SEG_STRATEGIES),
        seed=r"\d+",
    group:
        "segment"
    conda:
        "../envs/seg.yaml"
    threads: lambda wildcards: SEG["models"][wildcards.model]["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards: SEG["models"][wildcards.model]["mem_mb"],
        runtime=lambda wildcards: SEG["models"][wildcards.model]["runtime"],
    params:
        model=lambda wildcards: wildcards.model,
        plan=lambda wildcards: seg_wf.wildcard_plan(config, wildcards),
        settings=lambda wildcards: seg_wf.job_params(config, wildcards.model),
        attack=lambda wildcards: seg_wf.attack_params(config, wildcards.model),
        sources=lambda wildcards: source_params(seg_wf.base_checkpoint_input(config, wildcards.model)),
        train_seed=lambda wildcards: int(wildcards.seed),
    script:
        "../workflow/scripts/seg_evaluate.py"


STAGE_TARGETS.append(lambda: seg_wf.final_targets(config, seg_wf.finetune_strategies(config)))
