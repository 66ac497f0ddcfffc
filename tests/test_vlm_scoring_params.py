"""VLM evaluation jobs carry exactly their task's scoring settings (caption tokeniser, METEOR, judge)."""

from __future__ import annotations

from pathlib import Path

from medfm_robust.config import load_config
from medfm_robust.vlm.workflow import eval_params, perturb_params, scoring_params


def test_caption_settings_reach_only_caption_jobs(repo: Path) -> None:
    cfg = load_config(repo / "config" / "config.yaml")
    cfg["vlm"]["tasks"]["caption"]["tokenizer"] = "simple"
    cfg["vlm"]["tasks"]["caption"]["meteor"] = True
    assert scoring_params(cfg, "caption") == {"caption_tokenizer": "simple", "meteor": True}
    assert scoring_params(cfg, "vqa") == {}


def test_judge_settings_only_when_enabled_for_the_task(repo: Path) -> None:
    cfg = load_config(repo / "config" / "config.yaml")
    assert "judge_cfg" not in scoring_params(cfg, "vqa")
    cfg["vlm"]["judge"].update(enabled=True, tasks=["vqa"])
    judged = scoring_params(cfg, "vqa")["judge_cfg"]
    assert judged["judge"]["enabled"] is True
    assert list(judged["api"]["endpoints"]) == [cfg["vlm"]["judge"]["endpoint"]]
    assert "judge_cfg" not in scoring_params(cfg, "grounding")
    model = next(iter(cfg["vlm"]["models"]))
    dataset = next(iter(cfg["vlm"]["datasets"]))
    assert eval_params(cfg, model, "vqa", dataset)["scoring"] == scoring_params(cfg, "vqa")


def test_vlm_perturbation_overrides_follow_the_perturb_stage(repo: Path) -> None:
    cfg = load_config(repo / "config" / "config.yaml")
    dataset = next(iter(cfg["vlm"]["datasets"]))
    kinds = perturb_params(cfg, dataset)["types"]
    cfg["perturb"].setdefault("overrides", {})[kinds[0]] = {"max_evals": 9}
    cfg["perturb"]["overrides"]["not_a_vlm_type"] = {"max_evals": 3}
    assert perturb_params(cfg, dataset)["overrides"] == {kinds[0]: {"max_evals": 9}}
