# Report stage: the per-image metric Parquet files -> the paper's tables, figures and report captions.
# Its inputs are the other stages' runs (medfm_robust.report.targets.ReportTargets, from the config) at the
# paths of medfm_robust.paths. All rules here are cheap localrules; resources from report.resources.
import os

from medfm_robust.report.build import SEG_TABLES, VLM_TABLES
from medfm_robust.report.figures import SEG_PANELS
from medfm_robust.report import targets as report_targets

REPORT_PARAMS = {**{k: v for k, v in config["report"].items() if k != "resources"}, "seed": SEED}
REPORT_RES = config["report"]["resources"]
REPORT_INPUTS = report_targets.ReportTargets.from_config(config)
STAGE_TARGETS.append(REPORT_INPUTS.targets)
_SEG_TABLE_OUT = report_targets.table_outputs(SEG_TABLES, "Segmentation tables", report)
_VLM_TABLE_OUT = report_targets.table_outputs(VLM_TABLES, "VLM tables", report)


localrules:
    report_segmentation_tables,
    report_segmentation_figures,
    report_vlm_tables,
    report_vlm_figures,
    report_contact_sheets,


rule report_segmentation_tables:
    input:
        metrics=REPORT_INPUTS.seg_metric_files(),
        sidecars=REPORT_INPUTS.checkpoint_sidecars(),
    output:
        csv=_SEG_TABLE_OUT["csv"],
        md=_SEG_TABLE_OUT["md"],
        tex=_SEG_TABLE_OUT["tex"],
        cells=paths.table_cells("segmentation"),
    log:
        "logs/report_segmentation_tables/all.log",
    conda:
        "../envs/report.yaml"
    threads: REPORT_RES["threads"]
    resources:
        mem_mb=REPORT_RES["mem_mb"],
        runtime=REPORT_RES["runtime"],
    params:
        kind="segmentation",
        settings=REPORT_PARAMS,
    script:
        "../workflow/scripts/report_tables.py"


rule report_vlm_tables:
    input:
        metrics=REPORT_INPUTS.vlm_metric_files(),
        sidecars=[],
    output:
        csv=_VLM_TABLE_OUT["csv"],
        md=_VLM_TABLE_OUT["md"],
        tex=_VLM_TABLE_OUT["tex"],
        cells=paths.table_cells("vlm"),
    log:
        "logs/report_vlm_tables/all.log",
    conda:
        "../envs/report.yaml"
    threads: REPORT_RES["threads"]
    resources:
        mem_mb=REPORT_RES["mem_mb"],
        runtime=REPORT_RES["runtime"],
    params:
        kind="vlm",
        settings=REPORT_PARAMS,
    script:
        "../workflow/scripts/report_tables.py"


rule report_segmentation_figures:
    input:
        cells=paths.table_cells("segmentation"),
    output:
        **report_targets.figure_outputs(list(SEG_PANELS), report_targets.SEG_FIGURE_CATEGORY, report),
    log:
        "logs/report_segmentation_figures/all.log",
    conda:
        "../envs/report.yaml"
    threads: REPORT_RES["threads"]
    resources:
        mem_mb=REPORT_RES["mem_mb"],
        runtime=REPORT_RES["runtime"],
    params:
        kind="segmentation",
        dpi=config["report"]["figure_dpi"],
        metric=config["report"]["segmentation_metric"],
    script:
        "../workflow/scripts/report_figures.py"


rule report_vlm_figures:
    input:
        cells=paths.table_cells("vlm"),
    output:
        **report_targets.figure_outputs(
            REPORT_INPUTS.vlm_panels(), report_targets.VLM_FIGURE_CATEGORY, report
        ),
    log:
        "logs/report_vlm_figures/all.log",
    conda:
        "../envs/report.yaml"
    threads: REPORT_RES["threads"]
    resources:
        mem_mb=REPORT_RES["mem_mb"],
        runtime=REPORT_RES["runtime"],
    params:
        kind="vlm",
        dpi=config["report"]["figure_dpi"],
        metric="score",
    script:
        "../workflow/scripts/report_figures.py"


rule report_contact_sheets:
    input:
        [paths.contact_sheet(m) for m in REPORT_INPUTS.contact_sheet_modalities()],
    output:
        report_targets.contact_sheet_outputs(REPORT_INPUTS.contact_sheet_modalities(), report),
    log:
        "logs/report_contact_sheets/all.log",
    conda:
        "../envs/report.yaml"
    threads: REPORT_RES["threads"]
    resources:
        mem_mb=REPORT_RES["mem_mb"],
        runtime=REPORT_RES["runtime"],
    params:
        folder=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        '(for f in {input}; do cp -- "$f" {params.folder}/; done) > {log} 2>&1'
