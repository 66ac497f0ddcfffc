# Segmentation stage: each configured model x strategy x training seed x dataset -> per-image metric Parquet
# files results/metrics/segmentation/{model}/{strategy}/seed{seed}/{dataset}/{clean,<perturbation>...,fgsm,
# pgd}.parquet (zero_shot: seed0 only). One evaluation job per (model, strategy, seed, dataset) writes clean +
# every perturbation of the dataset (so each image is encoded once); one attack job writes fgsm + pgd. The
# strategy and seed are wildcards; the strategies evaluated come from the finetune stage
# (finetune_strategies), the seeds from finetune.seeds. Helpers: medfm_robust.seg.workflow.
from medfm_robust.config import SCHEMA_PATH, load_yaml
from medfm_robust.errors import MedFMError
from medfm_robust.seg import workflow as seg_wf

SEG_STRATEGIES = load_yaml(SCHEMA_PATH)["properties"]["segmentation"]["$defs"]["model"]["properties"][
    "strategies"
]["items"]["enum"]

try:
    SEG_JOBS = [
        (m, d, seg_wf.output_names(config, m, d))
        for m in seg_wf.models_by_job(config, "dataset")
        for d in seg_wf.datasets_for(config, m)
    ]
    SEG_STRATEGY_JOBS = [
        (m, seg_wf.strategy_job_layout(config, m), seg_wf.strategy_job_outputs(config, m))
        for m in seg_wf.models_by_job(config, "strategy")
    ]
except MedFMError as exc:
    raise WorkflowError(str(exc)) from None


# one_job_per: dataset -- one evaluation rule per (model, dataset): its outputs are that dataset's clean +
# perturbation files (the strategy is a wildcard); FGSM/PGD come from rule segment_attack.
for _model, _dataset, _names in SEG_JOBS:

    rule:
        name:
            f"segment_evaluate_{_model}_{_dataset}"
        input:
            test=f"results/data/{_dataset}/test.parquet",
            shards=[f"results/perturbed/{_dataset}/{n}.parquet" for n in _names[1:]],
            base=seg_wf.base_checkpoint_input(config, _model),
            finetuned=lambda wildcards, m=_model, d=_dataset: seg_wf.finetuned_input(
                m, d, wildcards.strategy, wildcards.seed
            ),
        output:
            **{
                n: seg_wf.METRICS_PATTERN.format(
                    model=_model, strategy="{strategy}", seed="{seed}", dataset=_dataset, name=n
                )
                for n in _names
            },
        log:
            f"logs/segment_evaluate/{_model}/{{strategy}}/seed{{seed}}/{_dataset}.log",
        params:
            model=_model,
            dataset=_dataset,
            perturbations=_names[1:],
            settings=seg_wf.job_params(config, _model),
            sources=lambda wildcards, m=_model: source_params(seg_wf.base_checkpoint_input(config, m)),
            train_seed=lambda wildcards: int(wildcards.seed),
        threads: config["segmentation"]["models"][_model]["threads"]
        resources:
            gpu=1,
            mem_mb=config["segmentation"]["models"][_model]["mem_mb"],
            runtime=config["segmentation"]["models"][_model]["runtime"],
        wildcard_constraints:
            strategy="|".join(SEG_STRATEGIES),
            seed=r"\d+",
        conda:
            "../envs/seg.yaml"
        script:
            "../workflow/scripts/seg_evaluate.py"


# one_job_per: strategy -- one rule per model; a job per (strategy, seed) evaluates every dataset, attacks
# included.
for _model, _layout, _outputs in SEG_STRATEGY_JOBS:

    rule:
        name:
            f"segment_evaluate_{_model}"
        input:
            tests=seg_wf.strategy_job_tests(config, _model),
            shards=seg_wf.strategy_job_shards(config, _model),
            base=seg_wf.base_checkpoint_input(config, _model),
            finetuned=lambda wildcards, m=_model: seg_wf.strategy_job_finetuned(
                config, m, wildcards.strategy, wildcards.seed
            ),
        output:
            _outputs,
        log:
            f"logs/segment_evaluate/{_model}/{{strategy}}/seed{{seed}}.log",
        params:
            model=_model,
            layout=_layout,
            settings=seg_wf.job_params(config, _model),
            attack=config["segmentation"]["attacks"],
            sources=lambda wildcards, m=_model: source_params(seg_wf.base_checkpoint_input(config, m)),
            train_seed=lambda wildcards: int(wildcards.seed),
        threads: config["segmentation"]["models"][_model]["threads"]
        resources:
            gpu=1,
            mem_mb=config["segmentation"]["models"][_model]["mem_mb"],
            runtime=config["segmentation"]["models"][_model]["runtime"],
        wildcard_constraints:
            strategy="|".join(SEG_STRATEGIES),
            seed=r"\d+",
        conda:
            "../envs/seg.yaml"
        script:
            "../workflow/scripts/seg_evaluate_strategy.py"


rule segment_attack:
    input:
        test="results/data/{dataset}/test.parquet",
        shards=lambda wildcards: [
            f"results/perturbed/{wildcards.dataset}/{n}.parquet"
            for n in seg_wf.perturbations_for(config, wildcards.model, wildcards.dataset)
        ],
        base=lambda wildcards: seg_wf.base_checkpoint_input(config, wildcards.model),
        finetuned=lambda wildcards: seg_wf.finetuned_input(
            wildcards.model, wildcards.dataset, wildcards.strategy, wildcards.seed
        ),
    output:
        fgsm="results/metrics/segmentation/{model}/{strategy}/seed{seed}/{dataset}/fgsm.parquet",
        pgd="results/metrics/segmentation/{model}/{strategy}/seed{seed}/{dataset}/pgd.parquet",
    log:
        "logs/segment_attack/{model}/{strategy}/seed{seed}/{dataset}.log",
    params:
        model=lambda wildcards: wildcards.model,
        dataset=lambda wildcards: wildcards.dataset,
        perturbations=lambda wildcards: seg_wf.perturbations_for(config, wildcards.model, wildcards.dataset),
        settings=lambda wildcards: seg_wf.job_params(config, wildcards.model),
        attack=config["segmentation"]["attacks"],
        sources=lambda wildcards: source_params(seg_wf.base_checkpoint_input(config, wildcards.model)),
        train_seed=lambda wildcards: int(wildcards.seed),
    threads: lambda wildcards: config["segmentation"]["models"][wildcards.model]["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards: config["segmentation"]["models"][wildcards.model]["mem_mb"],
        runtime=lambda wildcards: config["segmentation"]["models"][wildcards.model]["runtime"],
    wildcard_constraints:
        model="|".join(seg_wf.models_by_job(config, "dataset")) or "NO_MODEL",
        strategy="|".join(SEG_STRATEGIES),
        seed=r"\d+",
    conda:
        "../envs/seg.yaml"
    script:
        "../workflow/scripts/seg_evaluate.py"


STAGE_TARGETS.append(lambda: seg_wf.final_targets(config, globals().get("finetune_strategies")))
