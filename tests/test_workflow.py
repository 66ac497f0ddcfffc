"""The whole workflow: the CI configuration end to end, the paper DAG plan, partial re-runs, resumption.

One completed run of ``tests/config/ci.yaml`` (in a temporary copy of the repository) is shared by the
tests of the session; each re-run test clones it, makes one change and asserts the *exact* set of jobs a
dry run plans, computed from the full job DAG: the jobs directly affected by the change plus everything
downstream of them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow_support import (
    CI_CONFIG,
    REPO,
    SNAKEMAKE,
    clone_run,
    completed_ci_run,
    copy_repo,
    dag_edges,
    env_for,
    planned_jobs,
    snakemake,
    wait_for,
    with_descendants,
)

pytestmark = [pytest.mark.workflow]


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    return completed_ci_run(tmp_path_factory)


@pytest.fixture(scope="module")
def full_dag(ci_run):
    work, _ = ci_run
    return dag_edges(work)


def _edit_config(work: Path, edit) -> None:
    path = work / CI_CONFIG
    cfg = yaml.safe_load(path.read_text())
    edit(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.mark.slow
def test_ci_config_runs_end_to_end(ci_run):
    work, seconds = ci_run
    print(f"CI configuration end to end: {seconds:.0f} s on {os.cpu_count()} cores (shared machine, noisy)")
    tables = sorted((work / "results/tables").glob("*.csv"))
    figures = sorted((work / "results/figures").glob("fig3*.png"))
    assert tables and figures, "the CI run produced no tables or figures"
    for csv in tables:
        assert len(pd.read_csv(csv)) > 0, csv
    for png in figures:
        assert png.with_suffix(".pdf").stat().st_size > 0
    for p in (work / "results").rglob("*.parquet"):
        pd.read_parquet(p)  # every Parquet output is complete and readable
    report = work / "results/report.html"
    snakemake(work, "--report", str(report), timeout=300)
    html = report.read_text(errors="replace")
    for f in [*tables, *figures]:
        assert f.name in html, f"{f.name} missing from the HTML report"
    assert "bootstrap" in html  # captions are rendered


@pytest.mark.slow
def test_lint_is_clean(ci_run):
    work, _ = ci_run
    res = snakemake(work, "--lint", check=False, timeout=120)
    assert res.returncode == 0, res.stdout[-6000:]


@pytest.mark.slow
def test_nothing_changed_nothing_reruns(ci_run, tmp_path):
    work = clone_run(ci_run[0], tmp_path / "run")
    assert planned_jobs(work) == set()


def _script_of(rule: str) -> str | None:
    """The workflow script a rule runs (read from rules/*.smk)."""
    for smk in sorted((REPO / "rules").glob("*.smk")):
        m = re.search(rf"^rule {re.escape(rule)}:\n(.*?)(?=^rule |\Z)", smk.read_text(), re.M | re.S)
        if m:
            s = re.search(r'script:\s*\n\s*"\.\./(workflow/scripts/[^"]+)"', m.group(1))
            return s.group(1) if s else None
    return None


def _rules_using(script: str, nodes) -> set[str]:
    return {rule for rule, _ in nodes.values() if _script_of(rule) == script}


def _script_cases(nodes) -> list[str]:
    """An upstream script (the one with the most downstream rules) and the report figures script."""
    scripts = {}
    for rule, _ in nodes.values():
        s = _script_of(rule)
        if s:
            scripts.setdefault(s, set()).add(rule)
    chosen = ["workflow/scripts/report_figures.py"]
    upstream = [s for s in sorted(scripts) if not s.endswith(("report_figures.py", "report_tables.py"))]
    if upstream:
        chosen.append(upstream[len(upstream) // 2])
    return chosen


@pytest.mark.slow
def test_editing_a_script_reruns_its_rules_and_descendants(ci_run, full_dag, tmp_path):
    nodes, edges = full_dag
    for i, script in enumerate(_script_cases(nodes)):
        work = clone_run(ci_run[0], tmp_path / f"run{i}")
        with open(work / script, "a") as fh:
            fh.write("\n# an edit that changes the code\n")
        seeds = {key for key in nodes.values() if key[0] in _rules_using(script, nodes)}
        assert seeds, script
        assert planned_jobs(work) == with_descendants(seeds, nodes, edges), script


@pytest.mark.slow
def test_changing_one_perturbation_reruns_only_its_shards_and_dependants(ci_run, full_dag, tmp_path):
    nodes, edges = full_dag
    shards = sorted(k for k in nodes.values() if k[0] == "perturb_generate")
    assert shards, "no perturbation shard in the CI DAG"
    name = dict(shards[len(shards) // 2][1])["perturbation"]
    work = clone_run(ci_run[0], tmp_path / "run")
    cfg = yaml.safe_load((work / CI_CONFIG).read_text())
    evals = (cfg.get("perturb") or {}).get("max_evals", 14)

    def edit(c):
        c.setdefault("perturb", {}).setdefault("overrides", {})[name] = {"max_evals": evals + 3}

    _edit_config(work, edit)
    seeds = {k for k in shards if dict(k[1])["perturbation"] == name}
    assert planned_jobs(work) == with_descendants(seeds, nodes, edges)


@pytest.mark.slow
def test_changing_one_strategy_reruns_only_its_training_evaluation_and_tables(ci_run, full_dag, tmp_path):
    nodes, edges = full_dag
    runs = sorted(k for k in nodes.values() if k[0].startswith("finetune") and "strategy" in dict(k[1]))
    assert runs, "no fine-tuning job in the CI DAG"
    strategy = dict(runs[-1][1])["strategy"]
    work = clone_run(ci_run[0], tmp_path / "run")

    def edit(c):
        ft = c.setdefault("finetune", {}) or {}
        c["finetune"] = ft
        train = ft.setdefault("strategies", {}).setdefault(strategy, {}).setdefault("train", {})
        train["lr"] = 0.000123  # a value no configuration uses

    _edit_config(work, edit)
    seeds = {k for k in runs if dict(k[1])["strategy"] == strategy}
    planned = planned_jobs(work)
    assert planned == with_descendants(seeds, nodes, edges)
    assert {dict(k[1]).get("strategy") for k in planned if "strategy" in dict(k[1])} == {strategy}


@pytest.mark.slow
def test_adding_a_dataset_adds_only_its_jobs(ci_run, tmp_path):
    work = clone_run(ci_run[0], tmp_path / "run")
    cfg = yaml.safe_load((work / CI_CONFIG).read_text())
    taken = {v.get("modality") for v in cfg["datasets"].values()}
    modality = next(
        m for m in ("mri", "xray", "ultrasound", "endoscopy", "ct", "dermoscopy") if m not in taken
    )
    new = f"demo_{modality}_extra"
    _edit_config(
        work, lambda c: c["datasets"].update({new: {"adapter": "demo", "modality": modality, "n_images": 8}})
    )
    nodes, edges = dag_edges(work)
    seeds = {key for key in nodes.values() if dict(key[1]).get("dataset") == new}
    assert seeds, f"no job for the new dataset {new}"
    assert planned_jobs(work) == with_descendants(seeds, nodes, edges)


def _kill_group(proc: subprocess.Popen, sig: int) -> str:
    os.killpg(proc.pid, sig)
    try:
        return proc.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["KILL", "INT"])
def test_killed_run_resumes(ci_run, full_dag, tmp_path, sig):
    """Kill the main command while jobs run; the next run finishes without redoing completed jobs."""
    nodes, _ = full_dag
    work = clone_run(ci_run[0], tmp_path / "run")
    # Redo the ingestion of one dataset and everything downstream: many jobs of every stage.
    datasets = sorted({dict(k[1])["dataset"] for k in nodes.values() if "dataset" in dict(k[1])})
    victim = datasets[0]
    for p in (work / "results/data" / victim).glob("*"):
        p.unlink()
    expected = planned_jobs(work)
    assert len(expected) >= 3
    before = {p: p.stat().st_mtime_ns for p in (work / "results").rglob("*") if p.is_file()}
    start = time.time()
    proc = subprocess.Popen(
        [SNAKEMAKE, "--configfile", CI_CONFIG, "--workflow-profile", "profiles/local", "--cores", "2"],
        cwd=work,
        env=env_for(work),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )

    def some_job_done() -> bool:
        return any(p.is_file() and p.stat().st_mtime > start for p in (work / "results").rglob("*.parquet"))

    assert wait_for(some_job_done, timeout=600), "no job finished in time"
    time.sleep(1.0)
    assert proc.poll() is None, "the run finished before it could be killed; make the CI config bigger"
    _kill_group(proc, sig)
    changed = {
        p: p.stat().st_mtime_ns
        for p in (work / "results").rglob("*")
        if p.is_file() and (p not in before or p.stat().st_mtime_ns != before[p])
    }
    incomplete = _incomplete_outputs(work)
    completed = {p: t for p, t in changed.items() if str(p.relative_to(work)) not in incomplete}
    assert completed, "no job had completed before the kill"
    for p in (work / "results").rglob("*.parquet"):
        pd.read_parquet(p)  # no half-written file under a final name
    if sig == signal.SIGKILL:  # a killed Snakemake cannot remove its lock: `--unlock` once (documented)
        locked = snakemake(work, "--cores", "1", check=False)
        assert locked.returncode != 0 and "--unlock" in locked.stdout
        snakemake(work, "--unlock")
    snakemake(work, "--workflow-profile", "profiles/local", "--cores", "2", timeout=1200)
    redone = sorted(str(p) for p, t in completed.items() if not p.exists() or p.stat().st_mtime_ns != t)
    assert not redone, f"outputs of jobs completed before the kill were made again: {redone}"
    assert planned_jobs(work) == set()
    for p in (work / "results").rglob("*.parquet"):
        pd.read_parquet(p)


def _incomplete_outputs(work: Path) -> set[str]:
    """Outputs Snakemake marked incomplete (``.snakemake/incomplete/``: url-safe base64 of the path, long
    names split into ``@``-prefixed folders)."""
    from base64 import urlsafe_b64decode

    folder = work / ".snakemake/incomplete"
    out = set()
    for marker in folder.rglob("*") if folder.exists() else []:
        if marker.is_file() and marker.name != "migration_underway":
            b64 = "".join(part.removeprefix("@") for part in marker.relative_to(folder).parts)
            out.add(urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).decode())
    return out


@pytest.mark.slow
def test_paper_dag_plans_quickly(tmp_path):
    from medfm_robust.data.fixtures import build_fixture_resources

    work = copy_repo(tmp_path / "repo")
    build_fixture_resources(work / "resources")
    t0 = time.monotonic()
    res = subprocess.run(
        [SNAKEMAKE, "--configfile", "config/paper.yaml", "-n", "--quiet", "rules"],
        cwd=work,
        env=env_for(work),
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    print(f"paper DAG planned in {seconds:.1f} s")
    assert seconds < 10, f"planning the paper DAG took {seconds:.1f} s"
