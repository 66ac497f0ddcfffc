# Perturb stage: each dataset's canonical test shard -> one SSIM-calibrated shard per applicable
# perturbation type (paths.perturbed_shard), a per-dataset calibration report,
# and one contact sheet per modality. One job per (dataset, type) (rule perturb_generate, in job group
# "perturb": a cluster profile batches several into one submission with `group-components`, see
# docs/workflow.md "Job granularity"); params carry only that one type's settings
# (medfm_robust.perturb.workflow holds the helpers).
from medfm_robust.perturb import REGISTRY
from medfm_robust.perturb import workflow as perturb_wf


wildcard_constraints:
    perturbation="|".join(REGISTRY),
    modality="[a-z]+",


rule perturb_generate:
    input:
        paths.data_shard(split="test"),
    output:
        paths.perturbed_shard(),
    log:
        "logs/perturb_generate/{dataset}/{perturbation}.log",
    group:
        "perturb"
    conda:
        "../envs/perturb.yaml"
    params:
        perturbation=lambda wildcards: wildcards.perturbation,
        settings=lambda wildcards: perturb_wf.settings_for(config, wildcards.perturbation),
    script:
        "../workflow/scripts/perturb_generate.py"


rule perturb_report:
    input:
        lambda wildcards: perturb_wf.shards_of(config, wildcards.dataset),
    output:
        csv=paths.calibration_report(ext="csv"),
        json=paths.calibration_report(ext="json"),
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
        paths.contact_sheet(),
    log:
        "logs/perturb_contact_sheet/{modality}.log",
    conda:
        "../envs/perturb.yaml"
    params:
        tile=config["perturb"]["contact_sheet_tile"],
    script:
        "../workflow/scripts/perturb_contact_sheet.py"


# Final targets of the perturb stage: every perturbed shard, calibration report and contact sheet.
STAGE_TARGETS.append(lambda: perturb_wf.final_targets(config, DATASETS))
