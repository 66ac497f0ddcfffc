"""Execution profiles: their content, the rules' portable resources, and SLURM submissions (fake SLURM)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from test_workflow_support import (
    REPO,
    clone_run,
    completed_ci_run,
    env_for,
    parse_dryrun,
    slurm_profile_without_conda,
    snakemake,
    wait_for,
)

LOCAL = yaml.safe_load((REPO / "profiles/local/config.yaml").read_text())
SLURM = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
CLUSTER_KEYS = re.compile(r"\b(slurm_partition|slurm_account|gpu_model|qos|slurm_extra|constraint)\b")


def test_local_profile():
    assert LOCAL["cores"] == "all" and LOCAL["rerun-incomplete"] is True and LOCAL["keep-going"] is False
    # GPU rules must still run on a machine without a GPU: the gpu resource is never capped locally.
    assert "gpu" not in (LOCAL.get("resources") or {})
    assert LOCAL["resources"]["api_calls"] >= 1


def test_slurm_profile():
    assert SLURM["executor"] == "slurm"
    assert SLURM["software-deployment-method"] == "conda"
    assert SLURM["slurm-status-command"] == "squeue"  # sacct hangs silently without slurmdbd
    d = SLURM["default-resources"]
    assert d["slurm_partition"] and int(d["mem_mb"]) > 0 and int(d["runtime"]) > 0
    for rule, res in SLURM["set-resources"].items():
        assert "slurm_extra" not in res or not re.search(
            r"--(gres|gpus|qos|mem|time|partition)", res["slurm_extra"]
        )
        assert res.get("slurm_partition"), rule


def test_rules_carry_only_portable_resources():
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for lineno, line in enumerate(smk.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert not CLUSTER_KEYS.search(code), (
                f"{smk.name}:{lineno}: cluster setting in a rule: {line.strip()}"
            )
    text = (REPO / "rules/report.smk").read_text()
    local = re.search(r"localrules:\n((?:\s+\w+,\n)+)", text).group(1)
    rules = re.findall(r"^rule (\w+):", text, re.M)
    assert set(rules) <= {r.strip(" ,") for r in local.splitlines()}


@pytest.fixture(scope="module")
def ci_jobs(tmp_path_factory):
    """Every job of the completed CI run, with resources (a forced dry run)."""
    work, _ = completed_ci_run(tmp_path_factory)
    return work, parse_dryrun(snakemake(work, "-n", "--forceall").stdout)


@pytest.mark.slow
@pytest.mark.workflow
def test_every_gpu_rule_goes_to_the_gpu_partition(ci_jobs):
    _, jobs = ci_jobs
    gpu_rules = {j.rule for j in jobs if int(j.resource("gpu") or 0) > 0}
    assert gpu_rules, "the CI configuration has no GPU rule: the SLURM GPU routing is untested"
    set_res = SLURM["set-resources"]
    missing = sorted(r for r in gpu_rules if set_res.get(r, {}).get("slurm_partition") != "gpu")
    assert not missing, f"GPU rules without `slurm_partition: gpu` in profiles/slurm: {missing}"
    api_rules = {j.rule for j in jobs if j.resource("api_calls")}
    assert all(int(j.resource("api_calls")) == 1 for j in jobs if j.rule in api_rules)


FAKE = {
    "sbatch": """#!/bin/bash
exec 9>"$FAKE_SLURM_DIR/lock"; flock 9
n=$(( $(cat "$FAKE_SLURM_DIR/next" 2>/dev/null || echo 1000) + 1 )); echo $n > "$FAKE_SLURM_DIR/next"
args=(); for a in "$@"; do case "$a" in --wrap=*) ;; *) args+=("$a");; esac; done
{ printf '%q ' "${args[@]}"; echo; } >> "$FAKE_SLURM_DIR/sbatch.log"
echo $n
""",
    "squeue": """#!/bin/bash
for id in $(seq 1001 "$(cat "$FAKE_SLURM_DIR/next" 2>/dev/null || echo 1000)"); do echo "$id|RUNNING"; done
""",
    "sacct": "#!/bin/bash\necho 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1\n",
    "scontrol": "#!/bin/bash\necho 'MinJobAge               = 300 sec'\n",
    "sacctmgr": "#!/bin/bash\necho root\n",
    "sshare": "#!/bin/bash\necho root\n",
    "sinfo": "#!/bin/bash\necho 'cpu*|up'\n",
    "scancel": "#!/bin/bash\nexit 0\n",
}


def _fake_slurm(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True)
    for name, body in FAKE.items():
        p = bin_dir / name
        p.write_text(body)
        p.chmod(0o755)


@pytest.mark.slow
@pytest.mark.workflow
def test_fake_slurm_submissions(ci_jobs, tmp_path):
    """Submit one GPU job and one CPU job through profiles/slurm to fake SLURM commands."""
    work, jobs = ci_jobs
    remote = [j for j in jobs if not j.local and j.rule != "all" and j.outputs]
    gpu = next(j for j in remote if int(j.resource("gpu") or 0) > 0)
    cpu = next(j for j in remote if int(j.resource("gpu") or 0) == 0)
    clone = clone_run(work, tmp_path / "run")
    fake_bin = tmp_path / "fakebin"
    _fake_slurm(fake_bin)
    profile = slurm_profile_without_conda(tmp_path / "profile")
    env = env_for(clone, fake_bin)
    env["FAKE_SLURM_DIR"] = str(tmp_path)
    log = tmp_path / "sbatch.log"
    cmd = [
        str(Path(env["PATH"].split(os.pathsep)[1]) / "snakemake"),
        "--configfile",
        "tests/config/ci.yaml",
        "--workflow-profile",
        str(profile),
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--force",
        gpu.outputs[0],
        cpu.outputs[0],
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        ok = wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 2, timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0]
    assert ok, f"expected two sbatch calls, got {log.read_text() if log.exists() else 'none'}:\n{out[-4000:]}"
    by_rule: dict[str, list[str]] = {}
    for line in log.read_text().splitlines():
        args = shlex.split(line)
        comment = args[args.index("--comment") + 1]
        by_rule.setdefault(comment.removeprefix("rule_").split("_wildcards_")[0], args)
    assert {gpu.rule, cpu.rule} <= set(by_rule), f"sbatch calls for {sorted(by_rule)}"

    def opt(args, name):
        for i, a in enumerate(args):
            if a == name and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
        return None

    g, c = by_rule[gpu.rule], by_rule[cpu.rule]
    gpu_partition = SLURM["set-resources"][gpu.rule]["slurm_partition"]
    assert opt(g, "-p") == gpu_partition
    assert opt(g, "--gpus") == "1" or (opt(g, "--gres") or "").startswith("gpu")
    assert opt(g, "--mem") == gpu.resource("mem_mb") and opt(g, "-t") == gpu.resource("runtime")
    assert opt(c, "-p") == SLURM["set-resources"].get(cpu.rule, SLURM["default-resources"])["slurm_partition"]
    assert opt(c, "--gpus") is None and not (opt(c, "--gres") or "").startswith("gpu")
    assert opt(c, "--mem") == cpu.resource("mem_mb") and opt(c, "-t") == cpu.resource("runtime")
