"""API keys in the workflow: a missing key found at start-up (keep-going finishes the rest), and a key
echoed by the server reaching no output of a run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_api_client import echo_server
from test_workflow_support import SNAKEMAKE, env_for

REPO = Path(__file__).resolve().parents[1]


def _api_workflow(tmp_path: Path, model: dict) -> tuple[list[str], str, str]:
    """A small config (two demo datasets, one VLM demo set, one API model ``model``) in ``tmp_path``:
    (snakemake command for the API metric and an independent target, the API metric, that target)."""
    cfg = yaml.safe_load((REPO / "tests" / "config" / "ci.yaml").read_text())
    cfg["data"]["image_size"] = 32
    cfg["datasets"] = {"demo_ct": {"adapter": "demo", "modality": "ct", "n_images": 8},
                       "demo_dermoscopy": {"adapter": "demo", "modality": "dermoscopy", "n_images": 8}}
    cfg["perturb"].update(include=["gaussian_noise"], levels=[1])
    cfg["vlm"]["datasets"] = {"demo": {"adapter": "demo", "tasks": ["vqa"], "max_test_images": 2,
                                       "sources": ["demo_ct"]}}
    cfg["vlm"]["perturbations"] = {"include": ["gaussian_noise"], "levels": [1]}
    cfg["vlm"]["sampling"] = {"n_test": 2, "n_train": None, "n_val": None}
    cfg["vlm"]["models"] = {"gpt_4o_mini": {"kind": "api", **model}}
    cfg["vlm"]["api"] = {"max_retries": 1, "backoff_initial_s": 0.0, "backoff_max_s": 0.0, "timeout_s": 10}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    api_metric = "results/metrics/vlm/gpt_4o_mini/vqa/demo/clean.parquet"
    independent = "results/data/demo_dermoscopy/ingest_report.json"
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--configfile", "cfg.yaml", "-c1", api_metric,
           independent]
    return cmd, api_metric, independent


VAR = "MEDFM_TEST_API_KEY_VAR"


@pytest.fixture(scope="module")
def keep_going_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The API model's key unset: a run without --keep-going, then one with it (shared by both tests)."""
    work = tmp_path_factory.mktemp("keys")
    cmd, api_metric, independent = _api_workflow(work, {"api_key_env": VAR})
    env = {k: v for k, v in env_for(REPO).items() if k != VAR}
    stopped = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    results_after_stop = (work / "results").exists()
    kept = subprocess.run([*cmd, "--keep-going"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    return {"work": work, "stopped": stopped, "results_after_stop": results_after_stop, "kept": kept,
            "api_metric": api_metric, "independent": independent}


@pytest.mark.workflow
def test_missing_api_key_found_at_start_up_and_keep_going_finishes_the_rest(keep_going_run: dict) -> None:
    """An enabled API model without its key: one start-up message; without --keep-going nothing runs,
    with it every job that does not need the key finishes and only the API evaluation fails."""
    run, work = keep_going_run, keep_going_run["work"]
    out = run["stopped"].stdout + run["stopped"].stderr
    assert run["stopped"].returncode != 0 and "Stopping before any job (no --keep-going)" in out
    assert f"{VAR} (needed by vlm.models.gpt_4o_mini)" in out and not run["results_after_stop"]
    out = run["kept"].stdout + run["kept"].stderr
    assert run["kept"].returncode != 0 and out.count("API key(s) not set in the environment") == 1
    assert (work / run["independent"]).is_file() and (work / "results/vlm/perturbed/demo").is_dir()
    assert not (work / run["api_metric"]).exists()
    job_log = next((work / "logs" / "vlm_evaluate_api").rglob("*.log")).read_text()
    assert f"environment variable {VAR} is not set" in job_log and "Traceback" not in job_log


SECRET = "sk-medfm-WORKFLOW-SECRET-9876543210"


@pytest.mark.workflow
def test_api_key_echoed_by_the_server_reaches_no_output_of_the_workflow(tmp_path: Path,
                                                                        keep_going_run: dict) -> None:
    """A server on 127.0.0.1 echoes the request headers in its answers and error bodies: the key is in
    no file the workflow writes (results, logs, caches, .snakemake), nor on stdout / stderr. Continues
    the keep-going run with the key set (only the API evaluation job runs)."""
    work = shutil.copytree(keep_going_run["work"], tmp_path / "run", symlinks=True)
    mode = {"code": 200, "n": 0}

    def status(prompt: str) -> int:
        mode["n"] += 1
        return 400 if mode["code"] == 200 and mode["n"] % 3 == 0 else mode["code"]  # every third refused

    with echo_server(status) as url:
        cmd, api_metric, _ = _api_workflow(work, {"api_key_env": VAR, "base_url": url, "api_model": "m"})
        env = {**env_for(REPO), VAR: SECRET}
        first = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
        assert "1 of 1 steps" in first.stdout + first.stderr  # upstream jobs were kept
        texts = {str(p): pd.read_parquet(p).to_csv() for p in (work / "results").rglob("*.parquet")}
        answers = pd.read_parquet(work / api_metric)["raw_output"].tolist()
        assert any("[REDACTED]" in a for a in answers)  # the echoes arrived, redacted
        job_log = next((work / "logs" / "vlm_evaluate_api").rglob("*.log")).read_text()
        assert "HTTP 400" in job_log and "[REDACTED]" in job_log  # a refusal echoing the headers, logged
        texts["first job log"] = job_log
        shutil.rmtree(work / "results" / "vlm" / "api_cache")
        mode["code"] = 401  # a rejected key: the job fails, its error text echoes the headers
        second = subprocess.run([*cmd, "--forcerun", "vlm_evaluate_api"], cwd=work, env=env,
                                capture_output=True, text=True, timeout=600)
        assert second.returncode != 0 and "HTTP 401" in second.stdout + second.stderr
    texts["stdout/stderr"] = first.stdout + first.stderr + second.stdout + second.stderr
    for path in work.rglob("*"):
        if path.is_file():
            texts[f"{path} (now)"] = (pd.read_parquet(path).to_csv() if path.suffix == ".parquet"
                                      else path.read_bytes().decode("latin-1"))
    leaked = [name for name, text in texts.items() if SECRET in text or "Bearer sk-" in text]
    assert not leaked and len(texts) > 20
