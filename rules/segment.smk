# Segmentation stage: each configured model x strategy x training seed x dataset -> per-image metric Parquet
# files paths.seg_metrics(model, strategy, seed, dataset, name), name in clean, <perturbation>..., fgsm,
# pgd (zero_shot: seed0 only). One evaluation job per (model, strategy, seed, dataset) writes clean +
# every perturbation of the dataset (so each image is encoded once); one attack job writes fgsm + pgd. The
# strategy and seed are wildcards; the strategies evaluated come from the finetune stage's
# settings (seg_wf.finetune_strategies), the seeds from finetune.seeds. Helpers: medfm_robust.seg.workflow.
from medfm_robust.errors import MedFMError
from medfm_robust.seg import workflow as seg_wf
from medfm_robust.seg.strategy_registry import STRATEGIES as SEG_STRATEGIES

try:
    SEG_JOBS = [
        (m, d) for m in seg_wf.models_by_job(config, "dataset") for d in seg_wf.datasets_for(config, m)
    ]
    SEG_STRATEGY_JOBS = [
        (m, seg_wf.datasets_for(config, m)) for m in seg_wf.models_by_job(config, "strategy")
    ]
    for _model, _datasets in [*((m, [d]) for m, d in SEG_JOBS), *SEG_STRATEGY_JOBS]:
        seg_wf.job_plan(config, _model, _datasets)  # a bad model setting stops here, with its key
except MedFMError as exc:
    raise WorkflowError(str(exc)) from None


# one_job_per: dataset -- one evaluation rule per (model, dataset): its outputs are that dataset's clean +
# perturbation files (the strategy is a wildcard); FGSM/PGD come from rule segment_attack.
for _model, _dataset in SEG_JOBS:

    rule:
        name:
            f"segment_evaluate_{_model}_{_dataset}"
        input:
            unpack(seg_wf.inputs_for_wildcards(config, _model, [_dataset], "evaluate")),
            base=seg_wf.base_checkpoint_input(config, _model),
        output:
            **seg_wf.job_plan(config, _model, [_dataset], part="evaluate")[0]["outputs"],
        log:
            paths.log("segment_evaluate", f"{_model}/{{strategy}}/seed{{seed}}/{_dataset}"),
        wildcard_constraints:
            strategy="|".join(SEG_STRATEGIES),
            seed=r"\d+",
        conda:
            "../envs/seg.yaml"
        threads: config["segmentation"]["models"][_model]["threads"]
        resources:
            gpu=1,
            mem_mb=config["segmentation"]["models"][_model]["mem_mb"],
            runtime=config["segmentation"]["models"][_model]["runtime"],
        params:
            model=_model,
            plan=seg_wf.plan_for_wildcards(config, _model, [_dataset], "evaluate"),
            settings=seg_wf.job_params(config, _model),
            sources=lambda wildcards, m=_model: source_params(seg_wf.base_checkpoint_input(config, m)),
            train_seed=lambda wildcards: int(wildcards.seed),
        script:
            "../workflow/scripts/seg_evaluate.py"


# one_job_per: strategy -- one rule per model; a job per (strategy, seed) evaluates every dataset, attacks
# included.
for _model, _datasets in SEG_STRATEGY_JOBS:

    rule:
        name:
            f"segment_evaluate_{_model}"
        input:
            unpack(seg_wf.inputs_for_wildcards(config, _model, _datasets, "all")),
            base=seg_wf.base_checkpoint_input(config, _model),
        output:
            seg_wf.plan_outputs(seg_wf.job_plan(config, _model, _datasets)),
        log:
            paths.log("segment_evaluate", f"{_model}/{{strategy}}/seed{{seed}}"),
        wildcard_constraints:
            strategy="|".join(SEG_STRATEGIES),
            seed=r"\d+",
        conda:
            "../envs/seg.yaml"
        threads: config["segmentation"]["models"][_model]["threads"]
        resources:
            gpu=1,
            mem_mb=config["segmentation"]["models"][_model]["mem_mb"],
            runtime=config["segmentation"]["models"][_model]["runtime"],
        params:
            model=_model,
            plan=seg_wf.plan_for_wildcards(config, _model, _datasets, "all"),
            settings=seg_wf.job_params(config, _model),
            attack=config["segmentation"]["attacks"],
            sources=lambda wildcards, m=_model: source_params(seg_wf.base_checkpoint_input(config, m)),
            train_seed=lambda wildcards: int(wildcards.seed),
        script:
            "../workflow/scripts/seg_evaluate_strategy.py"


rule segment_attack:
    input:
        unpack(
            lambda wildcards: seg_wf.plan_inputs(
                seg_wf.job_plan(
                    config,
                    wildcards.model,
                    [wildcards.dataset],
                    wildcards.strategy,
                    wildcards.seed,
                    "attack",
                )
            )
        ),
        base=lambda wildcards: seg_wf.base_checkpoint_input(config, wildcards.model),
    output:
        **{n: paths.seg_metrics(name=n) for n in seg_wf.ATTACK_OUTPUTS},
    log:
        paths.log("segment_attack", "{model}/{strategy}/seed{seed}/{dataset}"),
    wildcard_constraints:
        model="|".join(seg_wf.models_by_job(config, "dataset")) or "NO_MODEL",
        strategy="|".join(SEG_STRATEGIES),
        seed=r"\d+",
    conda:
        "../envs/seg.yaml"
    threads: lambda wildcards: config["segmentation"]["models"][wildcards.model]["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards: config["segmentation"]["models"][wildcards.model]["mem_mb"],
        runtime=lambda wildcards: config["segmentation"]["models"][wildcards.model]["runtime"],
    params:
        model=lambda wildcards: wildcards.model,
        plan=lambda wildcards: seg_wf.job_plan(
            config, wildcards.model, [wildcards.dataset], wildcards.strategy, wildcards.seed, "attack"
        ),
        settings=lambda wildcards: seg_wf.job_params(config, wildcards.model),
        attack=config["segmentation"]["attacks"],
        sources=lambda wildcards: source_params(seg_wf.base_checkpoint_input(config, wildcards.model)),
        train_seed=lambda wildcards: int(wildcards.seed),
    script:
        "../workflow/scripts/seg_evaluate.py"


STAGE_TARGETS.append(lambda: seg_wf.final_targets(config, seg_wf.finetune_strategies(config)))
