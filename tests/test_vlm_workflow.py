"""VLM workflow: the rules' helpers (targets, inputs, params) and the chain of library functions the rules
call (sample tables -> perturbed inputs -> tiny training -> grounding LoRA -> evaluation tables)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from medfm_robust.config import load_config

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
METRIC_COLUMNS = ["sample_id", "model", "task", "dataset", "modality", "perturbation", "category", "level",
                  "ssim", "in_band", "raw_output", "parsed", "parse_ok", "reference", "model_revision"]


@pytest.fixture(scope="module")
def default_config() -> dict:
    return load_config(REPO / "config" / "config.yaml")


def test_final_targets_cover_every_model_task_and_condition(default_config):
    from medfm_robust.perturb import REGISTRY
    from medfm_robust.vlm import workflow as wf

    types = wf.types(default_config)
    include = default_config["vlm"]["perturbations"]["include"]
    # the demo spans every modality family, so without an include list every registered type is evaluated
    assert types and set(types) == (set(include) if include else set(REGISTRY))
    targets = wf.final_targets(default_config)
    models = wf.models(default_config, enabled=True)
    assert models == ["tiny_gemma3", "tiny_llava"]
    assert wf.controls(default_config) == ["blank_image", "no_image"]
    assert len(targets) == len(set(targets)) == len(models) * 3 * (1 + 2 + len(types))
    assert "results/metrics/vlm/tiny_llava/grounding/demo/clean.parquet" in targets
    assert "results/metrics/vlm/tiny_llava/vqa/demo/blank_image.parquet" in targets
    assert "results/metrics/vlm/tiny_gemma3/grounding/demo/no_image.parquet" in targets


def test_api_models_only_when_enabled(default_config):
    from medfm_robust.vlm import workflow as wf

    cfg = copy.deepcopy(default_config)
    cfg["vlm"]["models"]["gpt_4o_mini"] = {"kind": "api", "enabled": False, "tasks": ["vqa"]}
    assert not any("gpt_4o_mini" in t for t in wf.final_targets(cfg))
    cfg["vlm"]["models"]["gpt_4o_mini"]["enabled"] = True
    assert any(t.startswith("results/metrics/vlm/gpt_4o_mini/vqa/") for t in wf.final_targets(cfg))
    assert not any(t.startswith("results/metrics/vlm/gpt_4o_mini/caption/") for t in wf.final_targets(cfg))
    assert wf.eval_inputs(cfg, "gpt_4o_mini", "vqa", "demo")["model"] == []
    api = wf.api_params(cfg, "gpt_4o_mini")
    assert list(api["endpoints"]) == ["gpt_4o_mini"] and api["cache_dir"]


def test_params_depend_only_on_their_own_settings(default_config):
    """Changing one model's settings leaves the other model's jobs untouched (and vice versa)."""
    from medfm_robust.vlm import workflow as wf

    before = wf.eval_params(default_config, "tiny_llava", "vqa", "demo")
    cfg = copy.deepcopy(default_config)
    cfg["vlm"]["models"]["tiny_gemma3"]["batch_size"] = 3
    cfg["vlm"]["grounding_finetune"]["lr"] = 0.5
    assert wf.eval_params(cfg, "tiny_llava", "vqa", "demo") == before
    assert wf.eval_params(cfg, "tiny_gemma3", "vqa", "demo") != wf.eval_params(default_config, "tiny_gemma3",
                                                                            "vqa", "demo")
    assert "adapter" in wf.eval_inputs(default_config, "tiny_llava", "grounding", "demo")
    assert "adapter" not in wf.eval_inputs(default_config, "tiny_llava", "vqa", "demo")
    cfg["vlm"]["models"]["tiny_llava"]["max_new_tokens"] = {"vqa": 3}
    assert wf.max_new_tokens(cfg, "tiny_llava", "vqa") == 3
    assert wf.max_new_tokens(cfg, "tiny_llava", "caption") == cfg["vlm"]["tasks"]["caption"]["max_new_tokens"]


def test_canonical_shards_are_reused_only_where_they_exist(default_config):
    from medfm_robust.perturb import applicable_types
    from medfm_robust.vlm import workflow as wf

    for t in wf.types(default_config):
        for shard in wf.canonical_shards(default_config, "demo", t):
            ds = shard.split("/")[2]
            assert t in applicable_types(default_config["datasets"][ds]["modality"], [], [])
    cfg = copy.deepcopy(default_config)
    cfg["vlm"]["perturbations"]["levels"] = [1, 3]
    assert wf.levels(cfg) == [1, 3]
    assert wf.canonical_shards(cfg, "demo", "gaussian_noise") == []  # other levels: nothing to reuse


def test_local_model_dir_is_under_resources(default_config):
    from medfm_robust.vlm import workflow as wf

    cfg = copy.deepcopy(default_config)
    cfg["vlm"]["models"]["medgemma"] = {"kind": "local", "path": "vlm/medgemma-4b-it", "enabled": True,
                                        "tasks": ["vqa"], "grounding_finetune": True}
    assert wf.model_dir(cfg, "medgemma") == str(Path(cfg["resources_dir"]) / "vlm/medgemma-4b-it")
    assert wf.model_dir(cfg, "tiny_llava") == "results/vlm/models/tiny_llava"


def test_library_chain_the_rules_call(tmp_path):
    """sample tables -> perturbed inputs -> tiny model -> LoRA -> metric tables, with the rules' helpers."""
    import torch
    from test_vlm_models import SPECS, build_tables

    from medfm_robust.vlm.grounding_lora import finetune_grounding
    from medfm_robust.vlm.models import box_convention
    from medfm_robust.vlm.perturb import perturb_vlm_dataset
    from medfm_robust.vlm.run import run_evaluation_job
    from medfm_robust.vlm.train import train_tiny_from_tables

    torch.set_num_threads(1)
    tables = build_tables(tmp_path / "data", 10, modalities=("ct", "dermoscopy"))
    types = ["gaussian_noise", "rotation"]
    shards = {t: tmp_path / "perturbed" / f"{t}.parquet" for t in types}
    perturb_vlm_dataset(list(tables.values()), shards, levels=[1, 5], max_evals=6, progress=False)
    spec = SPECS["tiny_gemma3"]
    model_dir = tmp_path / "models" / "tiny_gemma3"
    training = {"vocab_size": 320, "epochs": 1, "min_epochs": 1, "batch_size": 16, "lr": 0.003,
                "vqa_target": "option_text"}
    info = train_tiny_from_tables("tiny_gemma3", spec, training, tables, model_dir, tmp_path / "m.json")
    assert info["epochs_run"] == 1 and "accuracy" in info["history"][0]
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
            "target_scope": "vision_tower", "epochs": 1, "batch_size": 8, "lr": 0.001}
    finetune_grounding("tiny_gemma3", spec, lora, base_dir=model_dir, samples_path=tables["grounding"],
                       out_dir=tmp_path / "adapter", info_path=tmp_path / "adapter.json",
                       state_path=tmp_path / "state.pt", convention=box_convention("tiny_gemma3", spec))
    controls = ["blank_image", "no_image"]
    for task in ("vqa", "grounding"):
        outputs = {c: tmp_path / "metrics" / task / f"{c}.parquet" for c in ["clean", *controls, *types]}
        run_evaluation_job(model_name="tiny_gemma3", spec=spec, task=task, samples=tables[task],
                           shards={t: [shards[t]] for t in types}, outputs=outputs, max_new_tokens=8,
                           levels=[1, 5], model_dir=model_dir, controls=controls,
                           adapter_dir=tmp_path / "adapter" if task == "grounding" else None)
        n_test = int((pd.read_parquet(tables[task])["split"] == "test").sum())
        clean = pd.read_parquet(outputs["clean"])
        assert set(METRIC_COLUMNS) <= set(clean.columns)
        assert len(clean) == n_test and (clean["level"] == 0).all()
        assert (clean["perturbation"] == "clean").all()
        noisy = pd.read_parquet(outputs["gaussian_noise"])
        assert len(noisy) == 2 * n_test and sorted(set(noisy["level"])) == [1, 5]
        assert (noisy["ssim"] < 1).all()
        assert clean["model_revision"].nunique() == 1
        for control in controls:  # the clean questions, image-blind (the tiny Gemma 3 takes text only)
            blind = pd.read_parquet(outputs[control])
            assert len(blind) == n_test and (blind["category"] == "control").all()
            assert (blind["perturbation"] == control).all() and blind["ssim"].isna().all()
            assert list(blind["sample_id"]) == list(clean["sample_id"])
            assert list(blind["reference"]) == list(clean["reference"])
        if task == "grounding":
            assert "+lora-" in clean["model_revision"].iloc[0]
            assert {"iou", "hit"} <= set(clean.columns)
            rotated = pd.read_parquet(outputs["rotation"])  # boxes move with label-moving types
            merged = rotated.merge(clean[["sample_id", "reference"]], on="sample_id", suffixes=("", "_clean"))
            assert (merged["reference"] != merged["reference_clean"]).any()
        else:
            assert "+lora-" not in clean["model_revision"].iloc[0]
            assert clean["correct"].dtype == bool


@pytest.mark.workflow
def test_dry_run_plans_the_vlm_jobs():
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", "tests/config/ci.yaml", "--cores", "2",
         "-q", "rules"], cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    for rule, count in [("vlm_samples", 3), ("vlm_perturb", 1), ("vlm_train_tiny", 2),
                        ("vlm_finetune_grounding", 2), ("vlm_evaluate", 6)]:
        assert any(line.split()[:2] == [rule, str(count)] for line in text.splitlines()), (rule, text[-3000:])


def test_api_model_through_the_evaluation_job(tmp_path, monkeypatch):
    """An API model (OpenAI-compatible server on 127.0.0.1) answers every condition; a re-run is served
    from the persistent cache without a single request."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from test_vlm_models import build_tables

    from medfm_robust.vlm.run import run_evaluation_job

    calls = []
    images = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(body["model"])
            parts = body["messages"][-1]["content"]
            images.append(sum(isinstance(p, dict) and p.get("type") == "image_url" for p in parts))
            reply = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "The answer is B."}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MEDFM_TEST_KEY", "sk-test")
        tables = build_tables(tmp_path / "data", 6, modalities=("ct",))
        spec = {"kind": "api", "api_model": "fake-vlm", "base_url": f"http://127.0.0.1:{server.server_port}/v1",
                "api_key_env": "MEDFM_TEST_KEY", "system_prompt": None}
        api = {"cache_dir": str(tmp_path / "cache"), "max_concurrency": 2, "timeout_s": 10, "max_retries": 1,
               "backoff_initial_s": 0.0, "backoff_max_s": 0.0, "temperature": 0.0, "endpoints": {}}
        outputs = {c: tmp_path / f"{c}.parquet" for c in ("clean", "blank_image", "no_image")}
        kwargs = dict(model_name="fake_api", spec=spec, task="vqa", samples=tables["vqa"], shards={},
                      outputs=outputs, max_new_tokens=8, levels=[1], api_settings=api,
                      controls=["blank_image", "no_image"])
        run_evaluation_job(**kwargs)
        table = pd.read_parquet(outputs["clean"])
        assert len(calls) == 3 * len(table) > 0 and set(calls) == {"fake-vlm"}
        # the no-image control is a text-only request; clean and blank-image requests carry one image each
        assert sorted(images) == [0] * len(table) + [1] * (2 * len(table))
        assert len(pd.read_parquet(outputs["no_image"])) == len(table)
        assert (table["raw_output"] == "The answer is B.").all() and (table["parsed"] == "B").all()
        assert (table["model_revision"] == "fake_api@fake-vlm").all()
        outputs["clean"].unlink()
        run_evaluation_job(**kwargs)
        assert len(calls) == 3 * len(table)  # every answer came from the cache
        pd.testing.assert_frame_equal(pd.read_parquet(outputs["clean"]), table)
    finally:
        server.shutdown()
