# Perturb stage: each dataset's canonical test shard -> one SSIM-calibrated shard per applicable
# perturbation type (paths.perturbed_shard), a per-dataset calibration report,
# and one contact sheet per modality. `perturb.one_job_per: dataset` gives one job per (dataset, type) (rule
# perturb_generate), so a cluster spreads the work; `type` gives one job per type writing the same files for
# every dataset the type applies to (rules perturb_generate_<type>), which saves job start-ups on small runs.
# params carry only that one type's settings (medfm_robust.perturb.workflow holds the helpers).
from medfm_robust.perturb import REGISTRY
from medfm_robust.perturb import workflow as perturb_wf

PERTURB_PER_TYPE = perturb_wf.jobs_per_type(config)


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
    wildcard_constraints:
        perturbation="NO_TYPE" if PERTURB_PER_TYPE else "|".join(REGISTRY),
    conda:
        "../envs/perturb.yaml"
    params:
        perturbation=lambda wildcards: wildcards.perturbation,
        settings=lambda wildcards: perturb_wf.settings_for(config, wildcards.perturbation),
    script:
        "../workflow/scripts/perturb_generate.py"


# one_job_per: type -- one rule per type; its outputs are that type's shards of every dataset it applies to.
for _name in perturb_wf.types_of(config, DATASETS) if PERTURB_PER_TYPE else []:
    _datasets = perturb_wf.datasets_of_type(config, DATASETS, _name)

    rule:
        name:
            f"perturb_generate_{_name}"
        input:
            [paths.data_shard(d, "test") for d in _datasets],
        output:
            [paths.perturbed_shard(d, _name) for d in _datasets],
        log:
            f"logs/perturb_generate/{_name}.log",
        conda:
            "../envs/perturb.yaml"
        params:
            perturbation=_name,
            settings=perturb_wf.settings_for(config, _name),
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
