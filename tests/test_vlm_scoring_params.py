"""VLM evaluation jobs carry exactly their task's scoring settings (caption tokeniser, METEOR, judge)."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_paper_prompts_and_metrics_are_the_original_ones(repo: Path) -> None:
    """config/paper.yaml: the original code's prompts (shared/reference/vlm.md section 3), corpus BLEU-4 and
    Acc@IoU>=0.5 in the tables, and both image-blind controls; the demo keeps its own prompts."""
    from medfm_robust.vlm.prompts import build_prompt
    from medfm_robust.vlm.workflow import conditions, prompt_params

    paper = load_config(repo / "config" / "paper.yaml")
    sample = {"question": "Which organ is shown?", "options": ["Liver", "Lung"], "width": 100, "height": 50}

    def prompt(cfg: dict, task: str) -> str:
        p = prompt_params(cfg, task)
        return build_prompt(task, sample, "norm1000", template=p.get("template"),
                            option_line=p.get("option_line"))

    assert prompt(paper, "caption") == "Describe this medical image in detail."
    assert prompt(paper, "vqa") == ("Which organ is shown?\n\nOptions:\n  A. Liver\n  B. Lung\n\n"
                                    "Please select the correct answer.")
    assert paper["report"]["vlm_metrics"] == {"vqa": "correct", "caption": "bleu4_corpus", "grounding": "hit"}
    assert conditions(paper)[:3] == ["clean", "blank_image", "no_image"]
    demo = load_config(repo / "config" / "config.yaml")
    assert prompt(demo, "caption") == "Which organ is shown? Answer with one concise sentence."
    assert prompt(demo, "vqa") == ("Which organ is shown?\nOptions:\nA. Liver\nB. Lung\n"
                                   "Answer with the letter of the correct option only.")
    assert prompt(paper, "grounding") == prompt(demo, "grounding")  # the LoRA adapter trains on this prompt
    assert eval_params(paper, "medgemma", "caption", "rocov2")["prompt"] == prompt_params(paper, "caption")


@pytest.mark.parametrize(("task", "template", "line", "message"), [
    ("vqa", "{question} pick one", None, r"vlm\.tasks\.vqa\.prompt.*\{options\}"),
    ("caption", "Describe {image}.", None, r"vlm\.tasks\.caption\.prompt.*unknown placeholder"),
    ("vqa", "{question} {options}", "{letter}", r"vlm\.tasks\.vqa\.option_line"),
    ("grounding", "{question", None, r"vlm\.tasks\.grounding\.prompt"),
])
def test_bad_prompt_templates_name_the_config_key(repo: Path, task, template, line, message) -> None:
    from medfm_robust.errors import ConfigError
    from medfm_robust.vlm.workflow import prompt_params

    cfg = load_config(repo / "config" / "config.yaml")
    cfg["vlm"]["tasks"][task]["prompt"] = template
    if line:
        cfg["vlm"]["tasks"][task]["option_line"] = line
    with pytest.raises(ConfigError, match=message):
        prompt_params(cfg, task)
