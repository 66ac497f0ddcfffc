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
    SNAKEMAKE,
    clone_run,
    completed_ci_run,
    env_for,
    local_rules,
    parse_dryrun,
    slurm_profile_without_conda,
    snakemake,
    wait_for,
)

LOCAL = yaml.safe_load((REPO / "profiles/local/config.yaml").read_text())
SLURM = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
CLUSTER_KEYS = re.compile(r"\b(slurm_partition|slurm_account|gpu_model|qos|slurm_extra|constraint)\b")


def test_local_profile():
    assert LOCAL["cores"] == "all" and LOCAL["rerun-incomplete"] is True and LOCAL["keep-going"] is True
    # GPU rules must still run on a machine without a GPU: the gpu resource is never capped locally.
    assert "gpu" not in (LOCAL.get("resources") or {})
    assert LOCAL["resources"]["api_calls"] >= 1


def test_slurm_profile():
    assert SLURM["executor"] == "slurm"
    assert SLURM["software-deployment-method"] == "conda"
    assert SLURM["slurm-status-command"] == "squeue"  # sacct hangs silently without slurmdbd
    d = SLURM["default-resources"]
    assert int(d["mem_mb"]) > 0 and int(d["runtime"]) > 0
    assert "slurm_partition" not in d  # a default partition would switch off the automatic choice
    parts = yaml.safe_load((REPO / SLURM["slurm-partition-config"]).read_text())["partitions"]
    assert any(p.get("max_gpu", 0) >= 1 for p in parts.values())
    assert any(p.get("max_gpu", 0) == 0 for p in parts.values())
    for rule, res in SLURM["set-resources"].items():
        extra = res.get("slurm_extra", "")
        assert not re.search(r"--(gres|gpus|qos|mem|time|partition)", extra), rule
        assert res.get("slurm_partition") in parts, rule


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
    work = completed_ci_run(tmp_path_factory).work
    return work, parse_dryrun(snakemake(work, "-n", "--forceall").stdout)


@pytest.mark.slow
@pytest.mark.workflow
def test_every_gpu_rule_goes_to_the_gpu_partition(ci_jobs):
    _, jobs = ci_jobs
    gpu_rules = {j.rule for j in jobs if int(j.resource("gpu") or 0) > 0}
    assert gpu_rules, "the CI configuration has no GPU rule: the SLURM GPU routing is untested"
    parts = yaml.safe_load((REPO / SLURM["slurm-partition-config"]).read_text())["partitions"]
    for rule in gpu_rules:
        pinned = SLURM["set-resources"].get(rule, {}).get("slurm_partition")
        assert pinned is None or parts[pinned].get("max_gpu", 0) >= 1, rule
    for j in jobs:
        assert j.resource("slurm_partition") is None, f"{j.rule}: partition set outside the profile"
    assert all(int(j.resource("api_calls")) == 1 for j in jobs if j.resource("api_calls"))


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
    """Submit GPU jobs and three CPU jobs of one group through profiles/slurm to fake SLURM commands: the GPU
    jobs land on a GPU partition, the three perturbation jobs in one submission (group-components)."""
    work, jobs = ci_jobs
    local = local_rules()
    remote = [j for j in jobs if j.rule not in local and j.outputs]
    producer = {out: j for j in jobs for out in j.outputs}

    def ancestors(job) -> set:
        seen, todo = set(), [job]
        while todo:
            for f in todo.pop().inputs:
                up = producer.get(f)
                if up is not None and up.key not in seen:
                    seen.add(up.key)
                    todo.append(up)
        return seen

    # jobs that do not depend on each other, so all are submitted at once
    def independent(job, chosen) -> bool:
        return all(job.key not in ancestors(c) and c.key not in ancestors(job) for c in chosen)

    gpus = [j for j in remote if int(j.resource("gpu") or 0) > 0]
    chosen: list = []
    for want_pinned in (True, False):
        job = next(
            (j for j in gpus if (j.rule in SLURM["set-resources"]) == want_pinned and independent(j, chosen)),
            None,
        )
        if job is not None:
            chosen.append(job)
    assert chosen, "no GPU job in the CI configuration"
    # CPU jobs: three perturbation shards, which the profile's group-components batch into one submission
    batch = [j for j in remote if j.rule == "perturb_generate" and independent(j, chosen)][:3]
    assert len(batch) == 3 and SLURM["group-components"]["perturb"] >= 3
    cpu = batch[0]
    chosen.append(cpu)
    clone = clone_run(work, tmp_path / "run")
    fake_bin = tmp_path / "fakebin"
    _fake_slurm(fake_bin)
    profile = slurm_profile_without_conda(tmp_path / "profile")
    env = env_for(clone, fake_bin)
    env["FAKE_SLURM_DIR"] = str(tmp_path)
    log = tmp_path / "sbatch.log"
    cmd = [
        SNAKEMAKE,
        "--configfile",
        "tests/config/ci.yaml",
        "--workflow-profile",
        str(profile),
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--force",
        *(j.outputs[0] for j in chosen),
        *(j.outputs[0] for j in batch[1:]),
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
        ok = wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= len(chosen), timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0]
    assert ok, (
        f"expected {len(chosen)} sbatch calls, got {log.read_text() if log.exists() else 'none'}:\n"
        + out[-4000:]
    )
    by_rule: dict[str, list[str]] = {}
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    for args in calls:
        # a rule's job: rule_<rule>_wildcards_...; a group job: rule_<group>_<rule>...
        name = args[args.index("--comment") + 1].removeprefix("rule_").split("_wildcards_")[0]
        rule = next((j.rule for j in chosen if name == j.rule or name.endswith(f"_{j.rule}")), name)
        by_rule.setdefault(rule, []).append(args)
    assert {j.rule for j in chosen} <= set(by_rule), f"sbatch calls for {sorted(by_rule)}"
    assert len(by_rule["perturb_generate"]) == 1, "the three perturbation jobs were not batched"
    assert len(calls) == len(chosen), [c[c.index("--comment") + 1] for c in calls]
    by_rule = {rule: args[0] for rule, args in by_rule.items()}

    def opt(args, name):
        for i, a in enumerate(args):
            if a == name and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
        return None

    def want(job, name: str) -> str:
        """The rule's own value, else the profile's default (both must reach sbatch)."""
        return job.resource(name) or str(SLURM["default-resources"][name])

    parts = yaml.safe_load((REPO / SLURM["slurm-partition-config"]).read_text())["partitions"]
    gpu_parts = {name for name, p in parts.items() if p.get("max_gpu", 0) >= 1}
    for job in chosen[:-1]:  # the GPU jobs: a GPU, on a GPU partition
        g = by_rule[job.rule]
        assert opt(g, "-p") in gpu_parts, (job.rule, g)
        assert opt(g, "--gpus") == "1" or (opt(g, "--gres") or "").startswith("gpu"), g
        assert opt(g, "--mem") == want(job, "mem_mb") and opt(g, "-t") == want(job, "runtime"), g
    c = by_rule[cpu.rule]
    assert opt(c, "-p") not in gpu_parts, c
    assert opt(c, "--gpus") is None and not (opt(c, "--gres") or "").startswith("gpu"), c
    # the batch asks for at least one job's memory and time (Snakemake sums or stacks them for a group)
    assert int(opt(c, "--mem")) >= int(want(cpu, "mem_mb")), c
    assert int(opt(c, "-t")) >= int(want(cpu, "runtime")), c
