"""The optional LLM judge (a secondary metric, like the original's DeepSeek judge) through the cached
API client."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medfm_robust.errors import ConfigError
from medfm_robust.vlm.api.client import APIClient, ChatRequest
from medfm_robust.vlm.api.from_config import client_from_config

log = logging.getLogger(__name__)

JUDGE_SYSTEM = "You are a strict grader of answers about medical images. Reply with one number only."
JUDGE_PROMPTS = {
    "vqa": ("Question:\n{question}\n\nReference answer: {reference}\nModel answer: {prediction}\n\n"
            "Score 1 if the model answer means the same as the reference answer, otherwise 0. "
            "Reply with the number only."),
    "caption": ("Reference description of a medical image:\n{reference}\n\nCandidate description:\n"
                "{prediction}\n\nRate from 0 to 1 how well the candidate covers the key medical information "
                "of the reference without adding wrong findings (1 = equivalent, 0 = unrelated or wrong). "
                "Reply with the number only."),
}


def parse_judge_score(text: str | None) -> float | None:
    """The first number in ``text`` if it lies in [0, 1], else None."""
    import re

    m = re.search(r"(?<![\w.])(\d+(?:\.\d+)?|\.\d+)", text or "")
    if m is None:
        return None
    value = float(m.group(1))
    return value if 0.0 <= value <= 1.0 else None


def judge_scores(
    client: APIClient, task: str, *, questions: Sequence[str], references: Sequence[str],
    predictions: Sequence[str], max_tokens: int = 8, progress: bool = True,
) -> list[float | None]:
    """Optional LLM-judge scores (0-1; None when the reply has no valid number) through the cached client.

    Text only (no image), temperature of the client. Like the original's DeepSeek judge but a secondary
    metric: accuracy and BLEU/CIDEr never depend on it, and a "partial" score is not counted as correct.
    """
    if task not in JUDGE_PROMPTS:
        raise ConfigError(f"config key 'vlm.judge.tasks': no judge prompt for task '{task}'")
    if not (len(questions) == len(references) == len(predictions)):
        raise ValueError("questions, references and predictions differ in length")
    template = JUDGE_PROMPTS[task]
    reqs = [ChatRequest(prompt=template.format(question=q, reference=r, prediction=p or "(empty)"),
                        image_png=None, max_tokens=max_tokens, system=JUDGE_SYSTEM,
                        temperature=client.temperature)
            for q, r, p in zip(questions, references, predictions, strict=True)]
    results = client.complete_many(reqs, progress=progress)
    scores = [parse_judge_score(r.text) for r in results]
    bad = sum(s is None for s in scores)
    if bad:
        log.warning("judge %s: %d of %d replies without a score in [0, 1]", client.endpoint.name, bad,
                    len(scores))
    return scores


def maybe_judge(
    task: str, rows: Sequence[Mapping[str, Any]], predictions: Sequence[str], vlm_cfg: Mapping[str, Any], *,
    cache_dir: str | Path | None = None, progress: bool = True,
) -> list[float | None] | None:
    """Judge scores per row when ``vlm.judge.enabled`` and ``task`` is in ``vlm.judge.tasks``, else None.

    ``rows`` are sample/condition records (``question``, ``options``, ``reference``); ``predictions`` the raw
    outputs. The judge endpoint is ``vlm.judge.endpoint`` in ``vlm.api.endpoints``; its key is needed only
    when judging is enabled.
    """
    judge = vlm_cfg.get("judge", {})
    if not judge.get("enabled", False) or task not in judge.get("tasks", []):
        return None
    from medfm_robust.vlm.prompts import build_prompt

    client = client_from_config(judge.get("endpoint", "gpt_4o_mini"), vlm_cfg.get("api", {}),
                                cache_dir=cache_dir)
    questions = [build_prompt(task, r) for r in rows]
    references = [str(r["reference"]) for r in rows]
    return judge_scores(client, task, questions=questions, references=references, predictions=predictions,
                        progress=progress)
