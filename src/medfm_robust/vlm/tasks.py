"""The VLM task registry: ``vqa``, ``caption`` and ``grounding``, each a decorated definition carrying its
metadata (the perturbation registry's pattern, :mod:`medfm_robust.perturb.registry`).

A task is registered with :func:`register` on its *prompt-values* function
``values(sample, model_convention, option_line) -> {placeholder: text}`` (what fills the task's prompt
template besides ``{question}``). The registration states the default prompt template and its allowed
placeholders, whether the answer is parsed as an option letter / a box, the ``reference`` column of the
metrics table, the per-sample score columns and the set-level summary metrics. :data:`TASKS` (the names,
in registry order) is what every other place (sample tables, models, the CLI, the schema's enums) uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from medfm_robust.errors import ConfigError
from medfm_robust.metrics.captions import BLEU_STATS, CAPTION_METRICS

VQA_INSTRUCTION = "Answer with the letter of the correct option only."
CAPTION_INSTRUCTION = "Answer with one concise sentence."

PromptValues = Callable[[Mapping[str, Any], str, str], dict[str, str]]


@dataclass(frozen=True)
class TaskSpec:
    """Metadata and prompt filling of one registered VLM task.

    ``prompt``: the default template (``vlm.tasks.<task>.prompt`` replaces it); ``placeholders``: the
    fields a template may use (``{question}`` always); ``answer``: what the parser recovers (``letter``,
    ``text`` or ``box``); ``reference``: the sample column (``answer``/``reference``) or ``box`` (the
    inclusive pixel box as text) that fills the metrics table's ``reference``; ``scores``: per-sample score
    columns (``meteor`` is added when enabled); ``summary``: set-level metrics of
    :func:`medfm_robust.metrics.vlm.summarise`.
    """

    name: str
    description: str
    prompt: str
    placeholders: tuple[str, ...]
    answer: Literal["letter", "text", "box"]
    reference: Literal["answer", "reference", "box"]
    scores: tuple[str, ...]
    summary: tuple[str, ...]
    values: PromptValues = field(repr=False, compare=False)


_REGISTRY: dict[str, TaskSpec] = {}


def register(
    name: str,
    *,
    prompt: str,
    placeholders: tuple[str, ...],
    answer: Literal["letter", "text", "box"],
    reference: Literal["answer", "reference", "box"],
    scores: tuple[str, ...],
    summary: tuple[str, ...],
) -> Callable[[PromptValues], PromptValues]:
    """Decorator registering ``values(sample, model_convention, option_line)`` as task ``name``; its
    docstring's first line is the description."""

    def deco(fn: PromptValues) -> PromptValues:
        if name in _REGISTRY:
            raise ValueError(f"VLM task {name!r} registered twice")
        doc = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        _REGISTRY[name] = TaskSpec(name, doc, prompt, placeholders, answer, reference, scores, summary, fn)
        return fn

    return deco


def get_task(name: str) -> TaskSpec:
    """The spec of task ``name``; an unknown name raises ``ConfigError`` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown VLM task '{name}' (one of {tuple(_REGISTRY)})") from None


@register("vqa", prompt="{question}\nOptions:\n{options}\n" + VQA_INSTRUCTION,
          placeholders=("question", "options"), answer="letter", reference="answer", scores=("correct",),
          summary=("accuracy",))
def _vqa(sample: Mapping[str, Any], model_convention: str, option_line: str) -> dict[str, str]:
    """Multiple-choice question answering: the question, lettered options, answer with the letter only."""
    from medfm_robust.vlm.prompts import format_options

    options = list(sample["options"])
    if len(options) < 2:
        raise ConfigError(f"sample {sample.get('sample_id')!r}: a VQA sample needs at least two options")
    return {"options": format_options(options, option_line)}


@register("caption", prompt="{question} " + CAPTION_INSTRUCTION, placeholders=("question",),
          answer="text", reference="reference", scores=(*CAPTION_METRICS, *BLEU_STATS),
          summary=CAPTION_METRICS)
def _caption(sample: Mapping[str, Any], model_convention: str, option_line: str) -> dict[str, str]:
    """Captioning: the sample's instruction plus a one-sentence format hint."""
    return {}


@register("grounding", prompt="{question} {box_format}", placeholders=("question", "box_format"),
          answer="box", reference="box", scores=("iou", "hit"), summary=("mean_iou", "acc_iou50"))
def _grounding(sample: Mapping[str, Any], model_convention: str, option_line: str) -> dict[str, str]:
    """Grounding: the question plus the answer-format sentence of the model's box convention."""
    from medfm_robust.vlm.prompts import box_instruction

    return {"box_format": box_instruction(model_convention, int(sample["width"]), int(sample["height"]))}


REGISTRY: Mapping[str, TaskSpec] = MappingProxyType(_REGISTRY)
TASKS: tuple[str, ...] = tuple(_REGISTRY)
