# Fine-tuning stage: canonical train/val shards -> one run per training seed (finetune.seeds)
# results/checkpoints/{model}/{dataset}/{strategy}/seed{seed}.safetensors (+ .json sidecar, per-epoch CSV,
# loss/Dice curve), and the workflow's own tiny SAM (results/checkpoints/tiny_sam/pretrained.safetensors).
# The resumable training state is a hidden file beside each checkpoint (.seed{seed}.state.pt), deliberately
# NOT an output, so a failed job never loses it.
# Models with `one_job_per: dataset` get one job per (model, dataset, strategy, seed) (rule finetune); models
# with `one_job_per: strategy` get one job per (strategy, seed) that trains every dataset in turn (rule
# finetune_<model>),
# which saves the per-job Python/torch start-up when each run takes only seconds.
# Helpers (torch-free): medfm_robust.seg.finetune_config.
from medfm_robust.seg import finetune_config as ft_cfg

FT = config["finetune"]
FT_PER_DATASET = ft_cfg.models_with_jobs_per(config, "dataset")
FT_PER_STRATEGY = ft_cfg.models_with_jobs_per(config, "strategy")
FT_TRAINED = "|".join(ft_cfg.TRAINED_STRATEGIES)
FT_RUN = ft_cfg.run_outputs("{model}", "{dataset}", "{strategy}", "{seed}")
finetune_strategies = lambda model, dataset: ft_cfg.trained_strategies(config, model, dataset, DATASETS)


rule finetune:
    input:
        train="results/data/{dataset}/train.parquet",
        val="results/data/{dataset}/val.parquet",
        base=lambda wildcards: ft_cfg.base_input(config, wildcards.model),
    output:
        **FT_RUN,
    log:
        "logs/finetune/{model}/{dataset}/{strategy}/seed{seed}.log",
    benchmark:
        "benchmarks/finetune/{model}/{dataset}/{strategy}/seed{seed}.tsv"
    params:
        model=lambda wildcards: wildcards.model,
        settings=lambda wildcards: ft_cfg.job_params(config, wildcards.model, wildcards.strategy),
        datasets=lambda wildcards: [wildcards.dataset],
        sources=lambda wildcards: source_params(ft_cfg.base_input(config, wildcards.model)),
        train_seed=lambda wildcards: int(wildcards.seed),
    threads: lambda wildcards: FT["models"][wildcards.model]["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards: FT["models"][wildcards.model]["mem_mb"],
        runtime=lambda wildcards: FT["models"][wildcards.model]["runtime"],
    wildcard_constraints:
        model="|".join(FT_PER_DATASET) if FT_PER_DATASET else "NO_MODEL",
        strategy=FT_TRAINED,
        seed=r"\d+",
    conda:
        "../envs/finetune.yaml"
    script:
        "../workflow/scripts/finetune_run.py"


# One job per (strategy, seed) for each `one_job_per: strategy` model; its outputs are the same files as above.
for _model in FT_PER_STRATEGY:
    _datasets = ft_cfg.model_datasets(config, _model, DATASETS)
    _runs = [ft_cfg.run_outputs(_model, d, "{strategy}", "{seed}") for d in _datasets]

    rule:
        name:
            f"finetune_{_model}"
        input:
            train=[f"results/data/{d}/train.parquet" for d in _datasets],
            val=[f"results/data/{d}/val.parquet" for d in _datasets],
            base=ft_cfg.base_input(config, _model),
        output:
            **{kind: [run[kind] for run in _runs] for kind in ft_cfg.OUTPUT_KINDS},
        log:
            f"logs/finetune/{_model}/{{strategy}}/seed{{seed}}.log",
        benchmark:
            f"benchmarks/finetune/{_model}/{{strategy}}/seed{{seed}}.tsv"
        params:
            model=_model,
            settings=lambda wildcards, m=_model: ft_cfg.job_params(config, m, wildcards.strategy),
            datasets=_datasets,
            sources=lambda wildcards, m=_model: source_params(ft_cfg.base_input(config, m)),
            train_seed=lambda wildcards: int(wildcards.seed),
        threads: FT["models"][_model]["threads"]
        resources:
            gpu=1,
            mem_mb=FT["models"][_model]["mem_mb"],
            runtime=FT["models"][_model]["runtime"] * max(1, len(_datasets)),
        wildcard_constraints:
            strategy=FT_TRAINED,
            seed=r"\d+",
        conda:
            "../envs/finetune.yaml"
        script:
            "../workflow/scripts/finetune_run.py"


rule pretrain_tiny_sam:
    input:
        train=expand("results/data/{dataset}/train.parquet", dataset=ft_cfg.pretrain_datasets(config, DATASETS)),
        val=expand("results/data/{dataset}/val.parquet", dataset=ft_cfg.pretrain_datasets(config, DATASETS)),
    output:
        checkpoint=ft_cfg.TINY_PRETRAINED,
        sidecar="results/checkpoints/tiny_sam/pretrained.json",
        history="results/checkpoints/tiny_sam/pretrained_history.csv",
        curve="results/checkpoints/tiny_sam/pretrained_curve.png",
    log:
        "logs/pretrain_tiny_sam/pretrain.log",
    benchmark:
        "benchmarks/pretrain_tiny_sam/pretrain.tsv"
    params:
        settings=ft_cfg.pretrain_params(config),
        datasets=ft_cfg.pretrain_datasets(config, DATASETS),
        device=FT["device"],
        seed=SEED,
    priority: 100  # on the critical path: fine-tuning and evaluation of tiny_sam wait for it
    threads: FT["pretrain_tiny_sam"]["threads"]
    resources:
        gpu=1,
        mem_mb=FT["pretrain_tiny_sam"]["mem_mb"],
        runtime=FT["pretrain_tiny_sam"]["runtime"],
    conda:
        "../envs/finetune.yaml"
    script:
        "../workflow/scripts/finetune_pretrain.py"


STAGE_TARGETS.append(lambda: ft_cfg.final_targets(config, DATASETS))
