"""The SLURM profile on a real single-node SLURM cluster (scripts/slurm_cluster.sh), end to end.

Runs the CI configuration through ``profiles/slurm`` (deployment method removed: no conda here) under a
hard timeout. Skipped, with the reason, only when not root or when SLURM cannot be installed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from test_workflow_support import (
    REPO,
    SNAKEMAKE,
    copy_repo,
    env_for,
    parse_dryrun,
    slurm_profile_without_conda,
)

CLUSTER = REPO / "scripts/slurm_cluster.sh"
TIMEOUT_S = 1800


def _cluster(action: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER), action], capture_output=True, text=True, timeout=timeout)


def _node_cpus() -> int:
    """CPUs of the cluster's node as SLURM knows them (``scontrol show node``), else this machine's."""
    out = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True).stdout
    m = re.search(r"CPUTot=(\d+)", out)
    return int(m.group(1)) if m else os.cpu_count() or 1


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running cluster; stopped afterwards unless it was already running before the test."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM cluster test needs root (it installs and starts munge, slurmctld, slurmd)")
    was_running = _cluster("status").returncode == 0
    if not was_running:
        have = all(
            shutil.which(b) or Path(f"/usr/sbin/{b}").exists() for b in ("slurmctld", "slurmd", "munged")
        )
        if (
            not have
            and subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=180).returncode
        ):
            pytest.skip("SLURM is not installed and apt is unreachable")
        started = _cluster("start", timeout=600)
        assert started.returncode == 0, f"cluster start failed:\n{started.stdout}\n{started.stderr}"
    yield
    if not was_running:
        _cluster("stop")


@pytest.mark.slow
@pytest.mark.workflow
def test_ci_config_end_to_end_on_slurm(slurm_cluster, tmp_path):
    work = copy_repo(tmp_path / "repo")
    profile = slurm_profile_without_conda(tmp_path / "profile")
    cmd = [
        "timeout", "-k", "30", str(TIMEOUT_S),  # Snakemake ignores SIGTERM while jobs are outstanding
        SNAKEMAKE, "--configfile", "tests/config/ci.yaml", "--workflow-profile", str(profile),
        "--slurm-init-seconds-before-status-checks", "2", "--jobs", "4", "--max-threads", str(os.cpu_count()),
        "--cores", str(_node_cpus()),  # a group submission must fit the one node
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        cwd=work,
        env=env_for(work),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S + 60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    assert proc.returncode == 0, f"SLURM run failed (rc={proc.returncode}):\n{out[-8000:]}"
    submitted = [line for line in out.splitlines() if "has been submitted with SLURM jobid" in line]
    assert submitted, "no job went through SLURM"
    # the run is complete: nothing left to do, and GPU rules ran as SLURM jobs with a (fake) GPU
    dry = subprocess.run(
        [SNAKEMAKE, "--configfile", "tests/config/ci.yaml", "-n", "--forceall"],
        cwd=work,
        env=env_for(work),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    gpu_rules = {j.rule for j in parse_dryrun(dry) if int(j.resource("gpu") or 0) > 0}
    # a rule's job logs to slurm_logs/rule_<rule>/, a group job (job groups perturb, finetune, segment: one
    # rule each) to slurm_logs/group_<group>_<rule>/
    logs = [m.groups() for line in submitted if (m := re.search(r"slurm_logs/(rule|group)_(\w+)/", line))]
    ran = {name.split("_", 1)[1] if kind == "group" else name for kind, name in logs}
    assert any(kind == "group" for kind, _ in logs), "no group job was submitted"
    assert gpu_rules and gpu_rules <= ran, f"GPU rules {gpu_rules} vs SLURM-run rules {ran}"
    again = subprocess.run(
        [SNAKEMAKE, "--configfile", "tests/config/ci.yaml", "-n"],
        cwd=work,
        env=env_for(work),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Nothing to be done" in again
