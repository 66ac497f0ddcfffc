# Perturb stage: each dataset's canonical test shard -> one SSIM-calibrated shard per applicable
# perturbation type (results/perturbed/{dataset}/{perturbation}.parquet), a per-dataset calibration report,
# and one contact sheet per modality. One job per (dataset, perturbation), so a cluster spreads the work.
from medfm_robust.perturb import REGISTRY, applicable_types

PERTURBATIONS = list(REGISTRY)


wildcard_constraints:
    perturbation="|".join(PERTURBATIONS),
    modality="[a-z]+",


def perturb_types(dataset):
    """The perturbation types produced for one dataset (its modality's applicable types, config-filtered)."""
    cfg = config["perturb"]
    modality = config["datasets"][dataset].get("modality")
    if not modality:
        return []
    return applicable_types(modality, cfg["include"], cfg["exclude"])


def perturb_settings(wildcards):
    """Only the settings of this one perturbation type (so editing another type re-runs nothing here)."""
    cfg = config["perturb"]
    own = cfg["overrides"].get(wildcards.perturbation, {})
    return {
        "levels": sorted(own.get("levels", cfg["levels"])),
        "bands": own.get("bands", cfg["bands"]),
        "param_range": own.get("param_range"),
        "max_evals": own.get("max_evals", cfg["max_evals"]),
        "max_images": cfg["max_images"],
        "seed": SEED,
    }


def perturb_shards_of(dataset):
    """Every perturbed shard of one dataset."""
    return expand(
        "results/perturbed/{dataset}/{perturbation}.parquet",
        dataset=dataset,
        perturbation=perturb_types(dataset),
    )


def perturb_dataset_shards(wildcards):
    """Input function: every perturbed shard of the job's dataset."""
    return perturb_shards_of(wildcards.dataset)


def perturb_sheet_dataset(modality):
    """The dataset shown on a modality's contact sheet: the first (sorted) dataset of that modality."""
    names = [d for d in DATASETS if config["datasets"][d].get("modality") == modality]
    return names[0] if names else None


def perturb_sheet_inputs(wildcards):
    """The test shard and perturbed shards of the modality's contact-sheet dataset."""
    dataset = perturb_sheet_dataset(wildcards.modality)
    return {"test": f"results/data/{dataset}/test.parquet", "shards": perturb_shards_of(dataset)}


def perturb_final_targets():
    """Every perturbed shard, calibration report and contact sheet."""
    targets = []
    for dataset in DATASETS:
        if not perturb_types(dataset):
            continue
        targets += perturb_shards_of(dataset)
        targets += expand("results/perturbed/{dataset}/calibration_report.{ext}", dataset=dataset, ext=["csv", "json"])
    modalities = sorted({config["datasets"][d].get("modality") for d in DATASETS if perturb_types(d)})
    targets += expand("results/figures/contact_sheets/{modality}.png", modality=modalities)
    return targets


rule perturb_generate:
    input:
        "results/data/{dataset}/test.parquet",
    output:
        "results/perturbed/{dataset}/{perturbation}.parquet",
    log:
        "logs/perturb_generate/{dataset}/{perturbation}.log",
    params:
        settings=perturb_settings,
    conda:
        "../envs/perturb.yaml"
    script:
        "../workflow/scripts/perturb_generate.py"


rule perturb_report:
    input:
        perturb_dataset_shards,
    output:
        csv="results/perturbed/{dataset}/calibration_report.csv",
        json="results/perturbed/{dataset}/calibration_report.json",
    log:
        "logs/perturb_report/{dataset}.log",
    conda:
        "../envs/perturb.yaml"
    script:
        "../workflow/scripts/perturb_report.py"


rule perturb_contact_sheet:
    input:
        unpack(perturb_sheet_inputs),
    output:
        "results/figures/contact_sheets/{modality}.png",
    log:
        "logs/perturb_contact_sheet/{modality}.log",
    params:
        tile=config["perturb"]["contact_sheet_tile"],
    conda:
        "../envs/perturb.yaml"
    script:
        "../workflow/scripts/perturb_contact_sheet.py"


STAGE_TARGETS.append(perturb_final_targets)
