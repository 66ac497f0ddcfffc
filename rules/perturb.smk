# Perturb stage: each dataset's canonical test shard -> one SSIM-calibrated shard per applicable
# perturbation type (results/perturbed/{dataset}/{perturbation}.parquet), a per-dataset calibration report,
# and one contact sheet per modality. One job per (dataset, perturbation), so a cluster spreads the work;
# params carry only that one type's settings (medfm_robust.perturb.workflow holds the helpers).
from medfm_robust.perturb import REGISTRY
from medfm_robust.perturb import workflow as perturb_wf


wildcard_constraints:
    perturbation="|".join(REGISTRY),
    modality="[a-z]+",


rule perturb_generate:
    input:
        "results/data/{dataset}/test.parquet",
    output:
        "results/perturbed/{dataset}/{perturbation}.parquet",
    log:
        "logs/perturb_generate/{dataset}/{perturbation}.log",
    params:
        settings=lambda wildcards: perturb_wf.settings_for(config, wildcards.perturbation),
    conda:
        "../envs/perturb.yaml"
    script:
        "../workflow/scripts/perturb_generate.py"


rule perturb_report:
    input:
        lambda wildcards: perturb_wf.shards_of(config, wildcards.dataset),
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
        unpack(lambda wildcards: perturb_wf.sheet_inputs(config, DATASETS, wildcards.modality)),
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


# Final targets of the perturb stage: every perturbed shard, calibration report and contact sheet.
STAGE_TARGETS.append(lambda: perturb_wf.final_targets(config, DATASETS))
