# Fine-tuning stage: canonical train/val shards -> results/checkpoints/{model}/{dataset}/{strategy}.safetensors
# (+ .json sidecar, per-epoch CSV, loss/Dice curve), and the workflow's own tiny SAM
# (results/checkpoints/tiny_sam/pretrained.safetensors). The resumable training state is a hidden file beside
# each checkpoint (.{strategy}.state.pt), deliberately NOT an output, so a failed job never loses it.
# Models with `one_job_per: dataset` get one job per (model, dataset, strategy) (rule finetune); models with
# `one_job_per: strategy` get one job per strategy that trains every dataset (rule finetune_<model>), which
# saves the per-job Python/torch start-up when each run takes only seconds.
from medfm_robust.seg.finetune import run_settings
from medfm_robust.seg.strategies import TRAINED_STRATEGIES

FT = config["finetune"]
FT_MODELS = sorted(FT["models"])
FT_TINY_PRETRAINED = "results/checkpoints/tiny_sam/pretrained.safetensors"


def finetune_datasets(model):
    """Datasets ``model`` is fine-tuned on (its ``datasets`` list, or every configured dataset)."""
    chosen = FT["models"][model]["datasets"]
    if chosen is None:
        return DATASETS
    unknown = sorted(set(chosen) - set(DATASETS))
    if unknown:
        raise WorkflowError(f"config key 'finetune.models.{model}.datasets': unknown dataset(s) {unknown}")
    return sorted(chosen)


def finetune_strategies(model, dataset):
    """Strategies trained for (model, dataset); used by the segmentation rules to pick what to evaluate."""
    if model not in FT["models"] or dataset not in finetune_datasets(model):
        return []
    return [s for s in FT["models"][model]["strategies"] if s != "zero_shot"]


def finetune_base_checkpoint(model):
    """Base weights: finetune.models.<m>.checkpoint, else segmentation.models.<m>.checkpoint, else (tiny_sam)
    the workflow's pretrained file."""
    ckpt = FT["models"][model]["checkpoint"]
    if ckpt is None:
        ckpt = config["segmentation"].get("models", {}).get(model, {}).get("checkpoint")
    if ckpt is None and model == "tiny_sam":
        ckpt = FT_TINY_PRETRAINED
    if ckpt is None:
        raise WorkflowError(f"config key 'finetune.models.{model}.checkpoint': base weights needed to fine-tune")
    return ckpt


def finetune_base_input(model):
    """The base checkpoint as an input file (none for the bundled LiteMedSAM)."""
    ckpt = finetune_base_checkpoint(model)
    return [] if ckpt == "bundled" else [ckpt]


def finetune_params(model, strategy):
    """Only what a (model, strategy) job depends on: that strategy's resolved settings + model settings."""
    return {
        **run_settings(FT, model, strategy),
        "checkpoint": finetune_base_checkpoint(model),
        "device": FT["device"],
        "keep_state": FT["keep_state"],
        "seed": SEED,
    }


def finetune_outputs(model, dataset, strategy):
    """Checkpoint, sidecar, per-epoch CSV and curve of one run."""
    stem = f"results/checkpoints/{model}/{dataset}/{strategy}"
    return {
        "checkpoint": f"{stem}.safetensors",
        "sidecar": f"{stem}.json",
        "history": f"{stem}_history.csv",
        "curve": f"{stem}_curve.png",
    }


def pretrain_datasets():
    """Datasets whose train/val splits pretrain tiny SAM."""
    chosen = FT["pretrain_tiny_sam"]["datasets"]
    return DATASETS if chosen is None else sorted(chosen)


def finetune_final_targets():
    """Every configured run's outputs, plus the pretrained tiny SAM when a stage uses it."""
    targets = []
    for model in FT_MODELS:
        for dataset in finetune_datasets(model):
            for strategy in finetune_strategies(model, dataset):
                targets += list(finetune_outputs(model, dataset, strategy).values())
    uses_tiny = "tiny_sam" in FT["models"] or "tiny_sam" in config["segmentation"].get("models", {})
    if uses_tiny:
        targets.append(FT_TINY_PRETRAINED)
    return targets


FT_PER_DATASET = [m for m in FT_MODELS if FT["models"][m]["one_job_per"] == "dataset"]


rule finetune:
    input:
        train="results/data/{dataset}/train.parquet",
        val="results/data/{dataset}/val.parquet",
        base=lambda wc: finetune_base_input(wc.model),
    output:
        checkpoint="results/checkpoints/{model}/{dataset}/{strategy}.safetensors",
        sidecar="results/checkpoints/{model}/{dataset}/{strategy}.json",
        history="results/checkpoints/{model}/{dataset}/{strategy}_history.csv",
        curve="results/checkpoints/{model}/{dataset}/{strategy}_curve.png",
    log:
        "logs/finetune/{model}/{dataset}/{strategy}.log",
    benchmark:
        "benchmarks/finetune/{model}/{dataset}/{strategy}.tsv"
    params:
        model=lambda wc: wc.model,
        settings=lambda wc: finetune_params(wc.model, wc.strategy),
        datasets=lambda wc: [wc.dataset],
    threads: lambda wc: FT["models"][wc.model]["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wc: FT["models"][wc.model]["mem_mb"],
        runtime=lambda wc: FT["models"][wc.model]["runtime"],
    wildcard_constraints:
        model="|".join(FT_PER_DATASET) if FT_PER_DATASET else "NO_MODEL",
        strategy="|".join(TRAINED_STRATEGIES),
    conda:
        "../envs/finetune.yaml"
    script:
        "../workflow/scripts/finetune_run.py"


# One job per strategy for each `one_job_per: strategy` model; outputs are the same files as rule finetune.
for _model in [m for m in FT_MODELS if FT["models"][m]["one_job_per"] == "strategy"]:
    _datasets = finetune_datasets(_model)

    rule:
        name:
            f"finetune_{_model}"
        input:
            train=[f"results/data/{d}/train.parquet" for d in _datasets],
            val=[f"results/data/{d}/val.parquet" for d in _datasets],
            base=finetune_base_input(_model),
        output:
            checkpoint=[f"results/checkpoints/{_model}/{d}/{{strategy}}.safetensors" for d in _datasets],
            sidecar=[f"results/checkpoints/{_model}/{d}/{{strategy}}.json" for d in _datasets],
            history=[f"results/checkpoints/{_model}/{d}/{{strategy}}_history.csv" for d in _datasets],
            curve=[f"results/checkpoints/{_model}/{d}/{{strategy}}_curve.png" for d in _datasets],
        log:
            f"logs/finetune/{_model}/{{strategy}}.log",
        benchmark:
            f"benchmarks/finetune/{_model}/{{strategy}}.tsv"
        params:
            model=_model,
            settings=lambda wc, m=_model: finetune_params(m, wc.strategy),
            datasets=_datasets,
        threads: FT["models"][_model]["threads"]
        resources:
            gpu=1,
            mem_mb=FT["models"][_model]["mem_mb"],
            runtime=FT["models"][_model]["runtime"] * max(1, len(_datasets)),
        wildcard_constraints:
            strategy="|".join(TRAINED_STRATEGIES),
        conda:
            "../envs/finetune.yaml"
        script:
            "../workflow/scripts/finetune_run.py"


rule pretrain_tiny_sam:
    input:
        train=expand("results/data/{dataset}/train.parquet", dataset=pretrain_datasets()),
        val=expand("results/data/{dataset}/val.parquet", dataset=pretrain_datasets()),
    output:
        checkpoint=FT_TINY_PRETRAINED,
        sidecar="results/checkpoints/tiny_sam/pretrained.json",
        history="results/checkpoints/tiny_sam/pretrained_history.csv",
        curve="results/checkpoints/tiny_sam/pretrained_curve.png",
    log:
        "logs/pretrain_tiny_sam/pretrain.log",
    benchmark:
        "benchmarks/pretrain_tiny_sam/pretrain.tsv"
    params:
        settings=FT["pretrain_tiny_sam"]["train"],
        datasets=pretrain_datasets(),
        device=FT["device"],
        seed=SEED,
    threads: FT["pretrain_tiny_sam"]["threads"]
    resources:
        gpu=1,
        mem_mb=FT["pretrain_tiny_sam"]["mem_mb"],
        runtime=FT["pretrain_tiny_sam"]["runtime"],
    conda:
        "../envs/finetune.yaml"
    script:
        "../workflow/scripts/finetune_pretrain.py"


STAGE_TARGETS.append(finetune_final_targets)
