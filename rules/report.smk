# Report stage: the per-image metric Parquet files -> the paper's tables, figures and report captions.
# Its inputs are the final targets of the other stages (STAGE_TARGETS, filled by the earlier rule files),
# recognised by their path contracts; this file must be included last. All rules here are cheap localrules.
from medfm_robust.report.build import SEG_TABLES, VLM_TABLES
from medfm_robust.report.figures import SEG_PANELS
from medfm_robust.report import targets as report_targets

REPORT_PARAMS = {**config["report"], "seed": SEED}
REPORT_INPUTS = report_targets.ReportTargets(list(STAGE_TARGETS))
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
        cells="results/tables/segmentation_cells.parquet",
    log:
        "logs/report_segmentation_tables/all.log",
    params:
        kind="segmentation",
        settings=REPORT_PARAMS,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/report.yaml"
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
        cells="results/tables/vlm_cells.parquet",
    log:
        "logs/report_vlm_tables/all.log",
    params:
        kind="vlm",
        settings=REPORT_PARAMS,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/report.yaml"
    script:
        "../workflow/scripts/report_tables.py"


rule report_segmentation_figures:
    input:
        cells="results/tables/segmentation_cells.parquet",
    output:
        **report_targets.figure_outputs(list(SEG_PANELS), report_targets.SEG_FIGURE_CATEGORY, report),
    log:
        "logs/report_segmentation_figures/all.log",
    params:
        kind="segmentation",
        dpi=config["report"]["figure_dpi"],
        metric=config["report"]["segmentation_metric"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/report.yaml"
    script:
        "../workflow/scripts/report_figures.py"


rule report_vlm_figures:
    input:
        cells="results/tables/vlm_cells.parquet",
    output:
        **report_targets.figure_outputs(REPORT_INPUTS.vlm_panels(), report_targets.VLM_FIGURE_CATEGORY, report),
    log:
        "logs/report_vlm_figures/all.log",
    params:
        kind="vlm",
        dpi=config["report"]["figure_dpi"],
        metric="score",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/report.yaml"
    script:
        "../workflow/scripts/report_figures.py"


rule report_contact_sheets:
    input:
        expand("results/figures/contact_sheets/{modality}.png", modality=REPORT_INPUTS.contact_sheet_modalities()),
    output:
        report_targets.contact_sheet_outputs(REPORT_INPUTS.contact_sheet_modalities(), report),
    log:
        "logs/report_contact_sheets/all.log",
    threads: 1
    conda:
        "../envs/report.yaml"
    shell:
        "(for f in {input}; do cp -- \"$f\" results/report/contact_sheets/; done) > {log} 2>&1"
