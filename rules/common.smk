# Configuration loading and validation, wildcard constraints and shared input functions.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from medfm_robust import paths
from medfm_robust.config import check_config_files, missing_credentials, validate_config
from medfm_robust.errors import MedFMError


def _validated(cfg):
    """Validate the config (defaults filled in); a bad setting stops here with one clear message.

    The config files are first re-read strictly: Snakemake's YAML loader keeps the last of duplicated keys
    without a word; ours names the file and line.
    """
    try:
        check_config_files(workflow.configfiles)
        return validate_config(cfg)
    except MedFMError as exc:
        raise WorkflowError(str(exc)) from None


config = _validated(config)

# API keys: checked once at start-up (main process only, dry runs included). A missing key is reported
# here; the jobs needing it fail at their start, and `onstart` stops the run before any job unless
# --keep-going (set in profiles/local) lets every independent job run to the end.
MISSING_CREDENTIALS = missing_credentials(config)


def _credentials_message():
    lines = [f"{var} (needed by {', '.join(users)})" for var, users in MISSING_CREDENTIALS.items()]
    return (
        "API key(s) not set in the environment: " + "; ".join(lines) + ". The jobs that send API requests "
        "fail (unless all their answers are cached); set the variable(s) or disable those models "
        "(vlm.models.<name>.enabled: false). With --keep-going every other job still runs."
    )


if MISSING_CREDENTIALS and workflow.is_main_process:
    from snakemake.logging import logger as _logger

    _logger.warning(_credentials_message())


def _jobs_needing_missing_keys():
    """Planned jobs that would send API requests with a missing key (API evaluations; all evaluations when
    the judge's key is missing)."""
    users = [u for us in MISSING_CREDENTIALS.values() for u in us]
    models = {u.split(".")[2] for u in users if u.startswith("vlm.models.")}
    judge = any(u.startswith("vlm.judge") for u in users)
    return [
        job
        for job in workflow.dag.needrun_jobs()
        if job.rule.name.startswith("vlm_evaluate")
        and (judge or (job.rule.name == "vlm_evaluate_api" and job.wildcards_dict.get("vlm_model") in models))
    ]


onstart:
    if (
        MISSING_CREDENTIALS
        and workflow.is_main_process
        and not workflow.execution_settings.keep_going
        and _jobs_needing_missing_keys()
    ):
        raise WorkflowError(_credentials_message() + " Stopping before any job (no --keep-going).")


# Data stage: every real dataset's folder must exist before any job runs (one message naming key and path).
from medfm_robust.data.ingest import check_dataset_paths

try:
    check_dataset_paths(config)
except MedFMError as exc:
    raise WorkflowError(str(exc)) from None
SEED = config["seed"]
DATASETS = sorted(config["datasets"])


wildcard_constraints:
    dataset="|".join(DATASETS) if DATASETS else "NO_DATASET",
    split="train|val|test",


# Each stage's rule file appends a function returning its final targets; `rule all` asks for all of them.
STAGE_TARGETS = []


def get_final_output():
    """Every final target of every stage enabled by the config."""
    targets = []
    for stage in STAGE_TARGETS:
        targets.extend(stage())
    return targets


# Rules reading dataset, model or checkpoint folders carry `params: sources=source_params(<their inputs>)`:
# a listing-manifest hash, so Snakemake's params trigger re-runs them when a file inside is added, removed
# or edited (a folder's own mtime does not change then). See medfm_robust.manifest and docs/workflow.md.
from medfm_robust.manifest import source_params
