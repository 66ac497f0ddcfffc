# Configuration loading and validation, wildcard constraints and shared input functions.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from medfm_robust.config import validate_config
from medfm_robust.errors import MedFMError


def _validated(cfg):
    """Validate the config (defaults filled in); a bad setting stops here with one clear message."""
    try:
        return validate_config(cfg)
    except MedFMError as exc:
        raise WorkflowError(str(exc)) from None


config = _validated(config)

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


def log_path(rule_name, pattern):
    """`logs/<rule>/<pattern>.log`: log paths mirror the output wildcards."""
    return f"logs/{rule_name}/{pattern}.log"


# Rules reading dataset, model or checkpoint folders carry `params: sources=source_params(<their inputs>)`:
# a listing-manifest hash, so Snakemake's params trigger re-runs them when a file inside is added, removed
# or edited (a folder's own mtime does not change then). See medfm_robust.manifest and docs/workflow.md.
from medfm_robust.manifest import source_params
