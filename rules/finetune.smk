# Fine-tuning stage: canonical train/val shards -> one run per training seed (finetune.seeds)
# paths.run_outputs(model, dataset, strategy, seed): checkpoint (+ .json sidecar, per-epoch CSV, loss/Dice
# curve), and the workflow's own tiny SAM (paths.tiny_sam_pretrained).
# The resumable training state is a hidden file beside each checkpoint (.seed{seed}.state.pt), deliberately
# NOT an output, so a failed job never loses it.
# One job per (model, dataset, strategy, seed) (rule finetune, in job group "finetune": a cluster profile
# batches short runs into one submission with `group-components`, see docs/workflow.md "Job granularity").
# Helpers (torch-free): medfm_robust.seg.finetune_config.
from medfm_robust.seg import finetune_config as ft_cfg

FT = config["finetune"]
FT_TRAINED = "|".join(ft_cfg.TRAINED_STRATEGIES)


rule finetune:
    input:
        train=paths.data_shard(split="train"),
        val=paths.data_shard(split="val"),
        base=lambda wildcards: ft_cfg.base_input(config, wildcards.model),
    output:
        **paths.run_outputs(),
    log:
        "logs/finetune/{model}/{dataset}/{strategy}/seed{seed}.log",
    benchmark:
        "benchmarks/finetune/{model}/{dataset}/{strategy}/seed{seed}.tsv"
    wildcard_constraints:
        model="|".join(FT["models"]) or "NO_MODEL",
        strategy=FT_TRAINED,
        seed=r"\d+",
    group:
        "finetune"
    conda:
        "../envs/finetune.yaml"
    threads: lambda wildcards: FT["models"][wildcards.model]["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wildcards: FT["models"][wildcards.model]["mem_mb"],
        runtime=lambda wildcards: FT["models"][wildcards.model]["runtime"],
    params:
        model=lambda wildcards: wildcards.model,
        settings=lambda wildcards: ft_cfg.job_params(config, wildcards.model, wildcards.strategy),
        sources=lambda wildcards: source_params(ft_cfg.base_input(config, wildcards.model)),
        train_seed=lambda wildcards: int(wildcards.seed),
    script:
        "../workflow/scripts/finetune_run.py"


rule pretrain_tiny_sam:
    input:
        train=[paths.data_shard(d, "train") for d in ft_cfg.pretrain_datasets(config, DATASETS)],
        val=[paths.data_shard(d, "val") for d in ft_cfg.pretrain_datasets(config, DATASETS)],
    output:
        **{kind: paths.tiny_sam_pretrained(suffix) for kind, suffix in paths.RUN_SUFFIXES.items()},
    log:
        "logs/pretrain_tiny_sam/pretrain.log",
    benchmark:
        "benchmarks/pretrain_tiny_sam/pretrain.tsv"
    priority: 100  # on the critical path: fine-tuning and evaluation of tiny_sam wait for it
    conda:
        "../envs/finetune.yaml"
    threads: FT["pretrain_tiny_sam"]["threads"]
    resources:
        gpu=1,
        mem_mb=FT["pretrain_tiny_sam"]["mem_mb"],
        runtime=FT["pretrain_tiny_sam"]["runtime"],
    params:
        settings=ft_cfg.pretrain_params(config),
        datasets=ft_cfg.pretrain_datasets(config, DATASETS),
        device=FT["device"],
        seed=SEED,
    script:
        "../workflow/scripts/finetune_pretrain.py"


STAGE_TARGETS.append(lambda: ft_cfg.final_targets(config, DATASETS))
