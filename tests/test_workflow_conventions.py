"""Snakemake conventions (issue 16 requirement 7): snakefmt, catalog metadata, config/README.md and
workflow/Snakefile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_workflow_support import CI_CONFIG, env_for, parse_dryrun

REPO = Path(__file__).resolve().parents[1]
SNAKEFILES = [
    "Snakefile",
    "workflow/Snakefile",
    *sorted(str(p.relative_to(REPO)) for p in REPO.glob("rules/*.smk")),
]


def test_snakefmt_check_is_clean():
    snakefmt = Path(sys.executable).parent / "snakefmt"
    res = subprocess.run([str(snakefmt), "--check", *SNAKEFILES], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]


def test_one_granularity_mechanism_rules_at_top_level_and_groups_in_the_profile():
    """No rule is generated in a loop or function (every `rule` starts a line), no rule file reaches into
    another's names through globals(), and the batchable rules' groups are exactly the SLURM profile's
    `group-components` (issue 16 requirement 3)."""
    import re

    groups = set()
    for smk in sorted(REPO.glob("rules/*.smk")):
        text = smk.read_text()
        assert not re.search(r"^[ \t]+rule\b", text, re.M), f"{smk.name}: a rule defined inside a block"
        assert "globals()" not in text, smk.name
        groups |= set(re.findall(r"^    group:\n        \"(\w+)\"", text, re.M))
    assert groups == {"perturb", "finetune", "segment"}
    slurm = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert set(slurm["group-components"]) == groups
    assert all(isinstance(n, int) and n >= 1 for n in slurm["group-components"].values())


def test_config_readme_documents_every_schema_section():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    readme = (REPO / "config" / "README.md").read_text()
    missing = [key for key in schema["properties"] if f"**`{key}`**" not in readme]
    assert not missing, f"config/README.md does not document section(s) {missing}"


def test_catalog_metadata_names_the_usage():
    meta = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    assert meta["usage"]["mandatory-flags"]["flags"] and meta["usage"]["software-stack-deployment"]["conda"]
    assert (REPO / "workflow" / "Snakefile").is_file()


@pytest.mark.workflow
def test_workflow_snakefile_plans_the_same_jobs():
    """``snakemake -s workflow/Snakefile`` (the catalog's entry point) plans the root Snakefile's jobs."""

    def plan(*args: str) -> set[tuple]:
        cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "--configfile", CI_CONFIG, *args]
        res = subprocess.run(cmd, cwd=REPO, env=env_for(REPO), capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
        return {(j.key, tuple(sorted(j.outputs))) for j in parse_dryrun(res.stdout)}

    root = plan()
    assert root and plan("-s", "workflow/Snakefile") == root
