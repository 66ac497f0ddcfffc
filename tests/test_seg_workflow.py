"""Rule helpers of the segmentation stage (medfm_robust.seg.workflow) on validated configs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from medfm_robust.config import load_config
from medfm_robust.errors import ConfigError
from medfm_robust.seg import workflow as W


@pytest.fixture(scope="module")
def default_cfg(repo: Path) -> dict:
    return load_config(repo / "config" / "config.yaml")


def test_embedded_default_targets(default_cfg: dict) -> None:
    cfg = copy.deepcopy(default_cfg)
    cfg["finetune"]["seeds"] = 1  # one training seed first (the default's three: below)
    assert W.models(cfg) == ["lite_medsam", "tiny_sam"]
    # tiny SAM: evaluated on the datasets held out of its pretraining, where it is fine-tuned
    assert W.datasets_for(cfg, "tiny_sam") == cfg["finetune"]["models"]["tiny_sam"]["datasets"]
    assert W.datasets_for(cfg, "lite_medsam") == ["demo_dermoscopy"]
    assert W.perturbations_for(cfg, "lite_medsam", "demo_dermoscopy") == ["gaussian_noise", "hair"]
    targets = W.final_targets(cfg, lambda m, d: ["dec_only"] if m == "tiny_sam" else [])
    lite = [t for t in targets if "/lite_medsam/" in t]
    # lite_medsam: the finetune stage trains nothing for it in this call
    assert lite == ["results/metrics/segmentation/lite_medsam/zero_shot/seed0/demo_dermoscopy.parquet"]
    fundus = [t for t in targets if "/tiny_sam/" in t and t.endswith("/demo_fundus.parquet")]
    root = "results/metrics/segmentation/tiny_sam"
    assert fundus == [f"{root}/{s}/seed0/demo_fundus.parquet" for s in ("zero_shot", "dec_only")]
    assert len(set(targets)) == len(targets)
    # three training seeds: every trained strategy three times, zero_shot (not trained) once, as seed 0
    cfg["finetune"]["seeds"] = 3
    seeded = W.final_targets(cfg, lambda m, d: ["dec_only"])
    seeded = [t for t in seeded if "/tiny_sam/" in t and t.endswith("/demo_fundus.parquet")]
    assert len(seeded) == 4
    assert {t.split("/")[5] for t in seeded if "/dec_only/" in t} == {"seed0", "seed1", "seed2"}
    assert {t.split("/")[5] for t in seeded if "/zero_shot/" in t} == {"seed0"}
    cfg["finetune"]["seeds"] = [4, 7]
    assert W.seeds_for(cfg, "lora") == [4, 7] and W.seeds_for(cfg, "zero_shot") == [0]


def test_params_carry_only_the_models_settings(default_cfg: dict) -> None:
    p = W.job_params(default_cfg, "tiny_sam")
    assert p["checkpoint"] == "results/checkpoints/tiny_sam/pretrained.safetensors"
    own = default_cfg["segmentation"]["models"]["tiny_sam"]
    assert p["cache_dir"] is None and p["threads"] == own["threads"] == 1
    assert p["attack_max_images"] == own["attack_max_images"] and p["max_images"] == own["max_images"]
    assert W.job_params(default_cfg, "lite_medsam")["cache_dir"] == "results/cache/embeddings"
    assert W.base_checkpoint_input(default_cfg, "lite_medsam") == []
    assert W.finetuned_input("tiny_sam", "demo_ct", "zero_shot", 0) == []
    assert W.finetuned_input("tiny_sam", "demo_ct", "lora", 2) == [
        "results/checkpoints/tiny_sam/demo_ct/lora/seed2.safetensors"
    ]


def test_bad_model_settings_name_the_key(default_cfg: dict) -> None:
    cfg = copy.deepcopy(default_cfg)
    cfg["segmentation"]["models"]["lite_medsam"]["datasets"] = ["nope"]
    with pytest.raises(ConfigError, match=r"segmentation\.models\.lite_medsam\.datasets.*nope"):
        W.datasets_for(cfg, "lite_medsam")
    cfg["segmentation"]["models"]["lite_medsam"]["perturbations"] = ["gaussian_noise", "sparkles"]
    with pytest.raises(ConfigError, match=r"segmentation\.models\.lite_medsam\.perturbations.*sparkles"):
        W.perturbations_for(cfg, "lite_medsam", "demo_dermoscopy")
    bad = copy.deepcopy(default_cfg)
    bad["segmentation"]["models"]["tiny_sam"]["strategies"] = ["zero_shot", "prompt_tuning"]
    from medfm_robust.config import validate_config

    with pytest.raises(ConfigError, match=r"segmentation\.models\.tiny_sam\.strategies"):
        validate_config(bad)


def test_job_plan_reads_and_writes_one_run(default_cfg: dict) -> None:
    cfg = copy.deepcopy(default_cfg)
    plan = W.job_plan(cfg, "tiny_sam", "demo_fundus")
    assert plan["output"] == "results/metrics/segmentation/tiny_sam/{strategy}/seed{seed}/demo_fundus.parquet"
    assert plan["attacks"] is True and plan["finetuned"].endswith("/{strategy}/seed{seed}.safetensors")
    assert list(plan["shards"]) == W.perturbations_for(cfg, "tiny_sam", "demo_fundus") and plan["shards"]
    inputs = W.plan_inputs(plan)
    assert inputs["tests"] == ["results/data/demo_fundus/test.parquet"]
    assert inputs["shards"] == list(plan["shards"].values())
    assert W.plan_inputs(W.job_plan(cfg, "tiny_sam", "demo_fundus", "zero_shot", 0))["finetuned"] == []
    lite = W.job_plan(cfg, "lite_medsam", "demo_dermoscopy", "dec_only", 1)
    assert lite["attacks"] is False and W.attack_params(cfg, "lite_medsam") is None
    assert sorted(lite["shards"]) == ["gaussian_noise", "hair"]
    assert W.attack_params(cfg, "tiny_sam") == cfg["segmentation"]["attacks"]
    # Every job's output is a final target and vice versa: one per (model, strategy, seed, dataset).
    cfg["finetune"]["seeds"] = 2
    targets = W.final_targets(cfg, lambda m, d: ["lora"] if d == "demo_fundus" else [])
    runs = W.evaluated_runs(cfg, lambda m, d: ["lora"] if d == "demo_fundus" else [])
    assert targets == [W.job_plan(cfg, m, d, s, k)["output"] for m, s, k, d in runs]
    assert len(set(targets)) == len(targets)
    assert {t for t in targets if "/tiny_sam/lora/" in t} == {
        f"results/metrics/segmentation/tiny_sam/lora/seed{k}/demo_fundus.parquet" for k in (0, 1)
    }
    bad = copy.deepcopy(cfg)
    bad["segmentation"]["models"]["tiny_sam"]["perturbations"] = ["sparkles"]
    with pytest.raises(ConfigError, match=r"segmentation\.models\.tiny_sam\.perturbations.*sparkles"):
        W.check_plans(bad)
