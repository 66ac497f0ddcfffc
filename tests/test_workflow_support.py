"""Helpers for the workflow tests: isolated repository copies, Snakemake runs and dry-run parsing.

Every run happens in a temporary copy of the repository (tracked and untracked-but-not-ignored files), so
the repository's own ``results/`` is never touched. The copy's ``src/`` is put first on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SNAKEMAKE = str(VENV_BIN / "snakemake")
CI_CONFIG = "tests/config/ci.yaml"


def copy_repo(dest: Path) -> Path:
    """Copy the working tree's tracked and untracked-but-not-ignored files to ``dest``."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = REPO / rel
        if not src.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest


def clone_run(src: Path, dest: Path) -> Path:
    """Copy a completed run (files, results and Snakemake metadata) keeping modification times."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def env_for(workdir: Path, extra_path: Path | None = None) -> dict[str, str]:
    """Environment for a Snakemake run in ``workdir`` (its src first on PYTHONPATH, offline HF)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(workdir / "src") + os.pathsep + env.get("PYTHONPATH", "")
    path = [str(VENV_BIN), env.get("PATH", "")]
    if extra_path is not None:
        path.insert(0, str(extra_path))
    env["PATH"] = os.pathsep.join(path)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    return env


def snakemake(
    workdir: Path, *args: str, timeout: float = 600, check: bool = True, extra_path: Path | None = None
) -> subprocess.CompletedProcess:
    """Run Snakemake in ``workdir`` with the CI config (under a hard timeout that kills the process group)."""
    cmd = [SNAKEMAKE, "--configfile", CI_CONFIG, *args]
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=env_for(workdir, extra_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(
            f"snakemake {' '.join(args)} timed out after {timeout} s:\n{out[-4000:]}"
        ) from None
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, "")
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed (rc={proc.returncode}):\n{out[-6000:]}")
    return result


@dataclass(frozen=True)
class Job:
    """One planned job: rule name and wildcards (its identity), plus its resources."""

    rule: str
    wildcards: tuple[tuple[str, str], ...]
    local: bool = False
    resources: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    outputs: tuple[str, ...] = field(default=(), compare=False)
    inputs: tuple[str, ...] = field(default=(), compare=False)

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return (self.rule, self.wildcards)

    def resource(self, name: str) -> str | None:
        return dict(self.resources).get(name)


_RULE = re.compile(r"^(local)?rule (\S+):$")


def _pairs(text: str, sep: str = "=") -> tuple[tuple[str, str], ...]:
    out = []
    for part in re.split(r",\s*(?=[A-Za-z_][A-Za-z0-9_]*=)", text.strip()):
        if sep in part:
            k, v = part.split(sep, 1)
            out.append((k.strip(), v.strip()))
    return tuple(sorted(out))


def parse_dryrun(text: str) -> list[Job]:
    """Jobs listed by ``snakemake -n`` (rule blocks with ``wildcards:``, ``resources:``, ``output:``)."""
    jobs: list[Job] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _RULE.match(lines[i].strip())
        if not m:
            i += 1
            continue
        local, rule = bool(m.group(1)), m.group(2)
        wildcards: tuple = ()
        resources: tuple = ()
        outputs: tuple = ()
        inputs: tuple = ()
        i += 1
        while i < len(lines) and lines[i].startswith("    "):
            s = lines[i].strip()
            if s.startswith("wildcards:"):
                wildcards = _pairs(s[len("wildcards:") :])
            elif s.startswith("resources:"):
                resources = _pairs(s[len("resources:") :])
            elif s.startswith("output:"):
                outputs = tuple(p.strip() for p in s[len("output:") :].split(","))
            elif s.startswith("input:"):
                inputs = tuple(p.strip() for p in s[len("input:") :].split(","))
            i += 1
        jobs.append(Job(rule, wildcards, local, resources, outputs, inputs))
    return jobs


def local_rules() -> set[str]:
    """Rules declared in ``localrules:`` directives of rules/*.smk (they never go to a cluster)."""
    names: set[str] = {"all"}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.findall(r"^localrules:\s*\n((?:[ \t]+[\w,\s]+\n)+)", smk.read_text(), re.M):
            names |= {n.strip() for n in re.split(r"[,\s]+", block) if n.strip()}
        names |= {
            n.strip()
            for n in re.findall(r"^localrules:[ \t]*([\w, \t]+)$", smk.read_text(), re.M)
            for n in n.split(",")
            if n.strip()
        }
    return names


def planned_jobs(workdir: Path, *args: str) -> set[tuple]:
    """Identity keys of the jobs a dry run would execute (``rule all`` excluded)."""
    out = snakemake(workdir, "-n", *args).stdout
    return {j.key for j in parse_dryrun(out) if j.rule != "all"}


def dag_edges(workdir: Path) -> tuple[dict[str, tuple], list[tuple[str, str]]]:
    """The full job DAG from a forced dry run: node id -> job key, and (producer, consumer) edges."""
    jobs = parse_dryrun(snakemake(workdir, "-n", "--forceall").stdout)
    nodes = {str(i): j.key for i, j in enumerate(jobs)}
    producer = {out: str(i) for i, j in enumerate(jobs) for out in j.outputs}
    edges = [(producer[f], str(i)) for i, j in enumerate(jobs) for f in j.inputs if f in producer]
    return nodes, edges


def with_descendants(seeds: set[tuple], nodes: dict[str, tuple], edges: list[tuple[str, str]]) -> set[tuple]:
    """``seeds`` (job keys) plus every job downstream of them, without ``rule all``."""
    children: dict[str, list[str]] = {}
    for a, b in edges:
        children.setdefault(a, []).append(b)
    ids = [n for n, key in nodes.items() if key in seeds]
    seen = set(ids)
    while ids:
        for c in children.get(ids.pop(), []):
            if c not in seen:
                seen.add(c)
                ids.append(c)
    return {nodes[n] for n in seen if nodes[n][0] != "all"}


@dataclass
class CompletedRun:
    """A completed run of the CI configuration, reached through two interruptions.

    Attributes:
        work: the working copy.
        seconds: wall time of all runs together.
        interruptions: per signal name: the number of files the killed run had finished, whether it was
            still running when killed, and files that read back as corrupt afterwards.
        redone: outputs of jobs completed before an interruption that a later run wrote again.
        lock_after_kill: output of a plain run right after the SIGKILL (must ask for ``--unlock``).
    """

    work: Path
    seconds: float
    interruptions: dict[str, dict] = field(default_factory=dict)
    redone: list[str] = field(default_factory=list)
    lock_after_kill: str = ""


_RUNS: dict[str, CompletedRun] = {}
LOCAL_RUN = ("--workflow-profile", "profiles/local", "--cores", "2")


def _snapshot(work: Path) -> dict[Path, int]:
    """Modification times of the result files (hidden files, e.g. atomic-write temporaries, left out)."""
    root = work / "results"
    files = (
        [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")] if root.exists() else []
    )
    out = {}
    for p in files:
        try:
            out[p] = p.stat().st_mtime_ns
        except FileNotFoundError:  # renamed or removed while we looked
            continue
    return out


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


def _unreadable(work: Path) -> list[str]:
    import pandas as pd

    bad = []
    for p in (work / "results").rglob("*.parquet"):
        try:
            pd.read_parquet(p)
        except Exception:
            bad.append(str(p))
    return bad


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default action. A shell starts background jobs with
    SIGINT ignored and children inherit that, so a suite launched with ``&`` would otherwise run a
    workflow that Ctrl-C cannot stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_and_kill(
    work: Path, sig: int, finished_jobs: int, timeout: float = 900
) -> tuple[dict, dict[Path, int]]:
    """Start the local run; send ``sig`` to its process group once it reported ``finished_jobs`` jobs done.

    Returns the observations and the result files completed (written and not marked incomplete) by the run.
    """
    before = _snapshot(work)
    log = work / f".interrupted_{signal.Signals(sig).name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [SNAKEMAKE, "--configfile", CI_CONFIG, *LOCAL_RUN],
            cwd=work,
            env=env_for(work),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )

        def progressed() -> bool:
            return (
                proc.poll() is not None
                or log.read_text(errors="replace").count("Finished jobid") >= finished_jobs
            )

        wait_for(progressed, timeout=timeout, interval=0.3)
        running = proc.poll() is None
        if running:  # a run that already ended is reported by test_killed_run_resumes
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    changed = {p: t for p, t in _snapshot(work).items() if before.get(p) != t}
    incomplete = _incomplete_outputs(work)
    completed = {p: t for p, t in changed.items() if str(p.relative_to(work)) not in incomplete}
    obs = {"running_when_killed": running, "finished_files": len(completed), "unreadable": _unreadable(work)}
    return obs, completed


def completed_ci_run(tmp_path_factory) -> CompletedRun:
    """One completed run of the CI configuration per test session, reached the hard way: the first run is
    interrupted with SIGINT (Ctrl-C) after one finished job, the second with SIGKILL after three more, the
    third (after ``--unlock``) completes.

    Tests clone ``work`` (:func:`clone_run`) before changing anything.
    """
    if "ci" not in _RUNS:
        work = copy_repo(tmp_path_factory.mktemp("ci_run") / "repo")
        run = CompletedRun(work, 0.0)
        t0 = time.monotonic()
        completed: dict[Path, int] = {}
        for sig, jobs in ((signal.SIGINT, 1), (signal.SIGKILL, 3)):
            obs, done = run_and_kill(work, sig, jobs)
            run.interruptions[signal.Signals(sig).name] = obs
            completed.update(done)
        locked = snakemake(work, *LOCAL_RUN, check=False)
        run.lock_after_kill = locked.stdout[-3000:] if locked.returncode else ""
        snakemake(work, "--unlock")
        snakemake(work, *LOCAL_RUN, timeout=1500)
        run.seconds = time.monotonic() - t0
        run.redone = sorted(
            str(p) for p, t in completed.items() if not p.exists() or p.stat().st_mtime_ns != t
        )
        _RUNS["ci"] = run
    return _RUNS["ci"]


def slurm_profile_without_conda(dest: Path) -> Path:
    """A copy of ``profiles/slurm`` without ``software-deployment-method`` (no conda here)."""
    dest.mkdir(parents=True, exist_ok=True)
    text = (REPO / "profiles/slurm/config.yaml").read_text().splitlines()
    kept = [line for line in text if not line.startswith("software-deployment-method")]
    (dest / "config.yaml").write_text("\n".join(kept) + "\n")
    return dest


def wait_for(predicate, timeout: float, interval: float = 0.5) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
