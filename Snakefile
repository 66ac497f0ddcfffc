# MedFM-Robust: raw datasets -> SSIM-calibrated perturbed shards -> fine-tuned checkpoints ->
# per-image metric Parquet files -> the paper's tables, figures and report.
import sys

from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless a config file is given on the command line (which then replaces it
# instead of being merged into it: otherwise a small config would inherit all of the default's datasets).
# A YAML syntax error in it is reported with file and line first (Snakemake's own message has neither).
if not workflow.config_settings.configfiles:
    sys.path.insert(0, f"{workflow.basedir}/src")
    from medfm_robust.config import check_config_files
    from medfm_robust.errors import ConfigError

    try:
        check_config_files(["config/config.yaml"])
    except ConfigError as exc:
        raise WorkflowError(str(exc)) from None

    configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/perturb.smk"
include: "rules/segment.smk"
include: "rules/finetune.smk"
include: "rules/vlm.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
