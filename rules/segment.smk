# Segmentation stage: each configured model x strategy x dataset -> per-image metric Parquet files
# results/metrics/segmentation/{model}/{strategy}/{dataset}/{clean,<perturbation>...,fgsm,pgd}.parquet.
# One evaluation job per (model, strategy, dataset) writes clean + every perturbation of the dataset (so each
# image is encoded once); one attack job writes fgsm + pgd. The strategy is always a wildcard.
from medfm_robust.config import SCHEMA_PATH, load_yaml

SEG = config["segmentation"]
SEG_STRATEGIES = load_yaml(SCHEMA_PATH)["properties"]["segmentation"]["$defs"]["model"]["properties"][
    "strategies"
]["items"]["enum"]
SEG_ATTACKS = ["fgsm", "pgd"]


def seg_datasets(model):
    """Datasets evaluated with ``model`` (its ``datasets`` list, or all configured ones)."""
    chosen = SEG["models"][model]["datasets"]
    if chosen is None:
        return DATASETS
    unknown = sorted(set(chosen) - set(DATASETS))
    if unknown:
        raise WorkflowError(f"config key 'segmentation.models.{model}.datasets': unknown dataset(s) {unknown}")
    return sorted(chosen)


def seg_perturbations(model, dataset):
    """Perturbation shards of ``dataset`` evaluated with ``model`` (the dataset's types, optionally filtered)."""
    types = perturb_types(dataset)
    chosen = SEG["models"][model]["perturbations"]
    if chosen is None:
        return sorted(types)
    unknown = sorted(set(chosen) - set(PERTURBATIONS))
    if unknown:
        raise WorkflowError(f"config key 'segmentation.models.{model}.perturbations': unknown type(s) {unknown}")
    return sorted(t for t in types if t in chosen)


def seg_strategies(model, dataset):
    """Strategies evaluated: the model's list, or zero_shot plus those the finetune stage trains."""
    chosen = SEG["models"][model]["strategies"]
    if chosen is None:
        trained = globals().get("finetune_strategies")
        chosen = ["zero_shot", *(trained(model, dataset) if trained else [])]
    return list(dict.fromkeys(chosen))


def seg_base_checkpoint(model):
    """The base checkpoint as an input file (none for random weights or the bundled LiteMedSAM)."""
    ckpt = SEG["models"][model]["checkpoint"]
    return [] if ckpt in (None, "bundled") else [ckpt]


def seg_finetuned(model, dataset, strategy):
    """The fine-tuned checkpoint of a trained strategy (zero_shot: none)."""
    if strategy == "zero_shot":
        return []
    return [f"results/checkpoints/{model}/{dataset}/{strategy}.safetensors"]


def seg_params(model):
    """Only the settings an evaluation job of ``model`` depends on (read by seg.evaluate.eval_settings)."""
    mcfg = SEG["models"][model]
    return {
        "checkpoint": mcfg["checkpoint"],
        "batch_size": mcfg["batch_size"],
        "max_images": mcfg["max_images"],
        "attack_max_images": mcfg["attack_max_images"],
        "cache_dir": SEG["cache_dir"] if mcfg["embedding_cache"] else None,
        "device": SEG["device"],
        "threads": mcfg["threads"],
        "box_jitter": SEG["box_jitter"],
        "nsd_tolerance": SEG["nsd_tolerance"],
        "seed": SEED,
    }


def seg_final_targets():
    """Every metric Parquet of every configured (model, strategy, dataset)."""
    targets = []
    for model in sorted(SEG["models"]):
        for dataset in seg_datasets(model):
            names = ["clean", *seg_perturbations(model, dataset)]
            if SEG["models"][model]["attacks"]:
                names += SEG_ATTACKS
            for strategy in seg_strategies(model, dataset):
                targets += expand(
                    "results/metrics/segmentation/{model}/{strategy}/{dataset}/{name}.parquet",
                    model=model,
                    strategy=strategy,
                    dataset=dataset,
                    name=names,
                )
    return targets


# One evaluation rule per (model, dataset): its outputs are that dataset's perturbation files.
for _model in sorted(SEG["models"]):
    for _dataset in seg_datasets(_model):
        _types = seg_perturbations(_model, _dataset)

        rule:
            name:
                f"segment_evaluate_{_model}_{_dataset}"
            input:
                test=f"results/data/{_dataset}/test.parquet",
                shards=[f"results/perturbed/{_dataset}/{t}.parquet" for t in _types],
                base=seg_base_checkpoint(_model),
                finetuned=lambda wc, m=_model, d=_dataset: seg_finetuned(m, d, wc.strategy),
            output:
                **{
                    name: f"results/metrics/segmentation/{_model}/{{strategy}}/{_dataset}/{name}.parquet"
                    for name in ["clean", *_types]
                },
            log:
                f"logs/segment_evaluate/{_model}/{{strategy}}/{_dataset}.log",
            params:
                model=_model,
                dataset=_dataset,
                perturbations=_types,
                settings=seg_params(_model),
            threads: SEG["models"][_model]["threads"]
            resources:
                gpu=1,
                mem_mb=SEG["models"][_model]["mem_mb"],
                runtime=SEG["models"][_model]["runtime"],
            wildcard_constraints:
                strategy="|".join(SEG_STRATEGIES),
            conda:
                "../envs/seg.yaml"
            script:
                "../workflow/scripts/seg_evaluate.py"


rule segment_attack:
    input:
        test="results/data/{dataset}/test.parquet",
        shards=lambda wc: expand(
            "results/perturbed/{dataset}/{p}.parquet", dataset=wc.dataset, p=seg_perturbations(wc.model, wc.dataset)
        ),
        base=lambda wc: seg_base_checkpoint(wc.model),
        finetuned=lambda wc: seg_finetuned(wc.model, wc.dataset, wc.strategy),
    output:
        fgsm="results/metrics/segmentation/{model}/{strategy}/{dataset}/fgsm.parquet",
        pgd="results/metrics/segmentation/{model}/{strategy}/{dataset}/pgd.parquet",
    log:
        "logs/segment_attack/{model}/{strategy}/{dataset}.log",
    params:
        model=lambda wc: wc.model,
        dataset=lambda wc: wc.dataset,
        perturbations=lambda wc: seg_perturbations(wc.model, wc.dataset),
        settings=lambda wc: seg_params(wc.model),
        attack=SEG["attacks"],
    threads: lambda wc: SEG["models"][wc.model]["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wc: SEG["models"][wc.model]["mem_mb"],
        runtime=lambda wc: SEG["models"][wc.model]["runtime"],
    wildcard_constraints:
        model="|".join(sorted(SEG["models"])) if SEG["models"] else "NO_MODEL",
        strategy="|".join(SEG_STRATEGIES),
    conda:
        "../envs/seg.yaml"
    script:
        "../workflow/scripts/seg_evaluate.py"


STAGE_TARGETS.append(seg_final_targets)
