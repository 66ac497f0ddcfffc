"""Task prompts and training targets for every VLM, with the grounding box convention of each model.

Box conventions (``model_convention``), all for the stored image of ``width x height`` pixels:

- ``pixel``: ``[x0, y0, x1, y1]`` pixel indices of the top-left and bottom-right box pixels (inclusive, as
  the sample table's ``box``).
- ``norm1``: ``[x0, y0, x1, y1]`` box *edges* as fractions of width/height in [0, 1]
  (``x0 / W``, ``(x1 + 1) / W`` for an inclusive pixel box).
- ``norm1000``: the same edges on a 0-1000 integer scale (MedGemma/PaliGemma-style, Qwen2-VL).
- ``yxyx1000``: ``[y0, x0, y1, x1]`` edges on a 0-1000 scale (Gemini's native ``box_2d``).

A sample is a mapping with the sample-table columns (``question``, ``options``, ``answer``, ``box``,
``height``, ``width``; see :mod:`medfm_robust.vlm.datasets`).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from medfm_robust.boxes import box_text
from medfm_robust.errors import ConfigError
from medfm_robust.vlm.tasks import REGISTRY as TASK_REGISTRY

BOX_CONVENTIONS = ("pixel", "norm1", "norm1000", "yxyx1000")
LETTERS = "ABCDEFGH"
SYSTEM_PROMPT = "You are an expert medical imaging specialist."
#: The demo's prompt templates (``vlm.tasks.<task>.prompt`` replaces them), from the task registry
#: (:mod:`medfm_robust.vlm.tasks`): ``{question}`` is the sample's question / instruction, ``{options}`` the
#: option lines (``OPTION_LINE`` each), ``{box_format}`` the answer format sentence of the model's box
#: convention (:func:`box_instruction`).
DEFAULT_PROMPTS = {name: spec.prompt for name, spec in TASK_REGISTRY.items()}
OPTION_LINE = "{letter}. {text}"
PLACEHOLDERS = {name: spec.placeholders for name, spec in TASK_REGISTRY.items()}


def check_convention(convention: str) -> str:
    """Return ``convention`` or raise ``ConfigError`` if it is not one of :data:`BOX_CONVENTIONS`."""
    if convention not in BOX_CONVENTIONS:
        raise ConfigError(f"unknown box convention '{convention}' (one of {', '.join(BOX_CONVENTIONS)})")
    return convention


def format_options(options: Sequence[str], line: str = OPTION_LINE) -> str:
    """``A. first\\nB. second ...`` (one option per line, each ``line`` with ``{letter}`` and ``{text}``)."""
    return "\n".join(line.format(letter=LETTERS[i], text=opt) for i, opt in enumerate(options))


def _fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def check_prompt(task: str, template: str | None, option_line: str | None = None) -> None:
    """Raise ``ConfigError`` naming ``vlm.tasks.<task>.prompt`` / ``.option_line`` when a template uses an
    unknown placeholder, or a VQA prompt lacks ``{options}`` (the parser needs the lettered options)."""
    if task not in DEFAULT_PROMPTS:
        raise ConfigError(f"unknown VLM task '{task}'")
    if template is not None:
        try:
            fields = _fields(template)
        except ValueError as exc:
            raise ConfigError(f"config key 'vlm.tasks.{task}.prompt': {exc}") from exc
        bad = sorted(set(fields) - set(PLACEHOLDERS[task]))
        if bad:
            raise ConfigError(f"config key 'vlm.tasks.{task}.prompt': unknown placeholder(s) {bad} "
                              f"(allowed: {', '.join(PLACEHOLDERS[task])})")
        if "options" in PLACEHOLDERS[task] and "options" not in fields:
            raise ConfigError(f"config key 'vlm.tasks.{task}.prompt': must contain {{options}}")
    if option_line is not None:
        try:
            fields = _fields(option_line)
        except ValueError as exc:
            raise ConfigError(f"config key 'vlm.tasks.{task}.option_line': {exc}") from exc
        if sorted(set(fields)) != ["letter", "text"]:
            raise ConfigError(f"config key 'vlm.tasks.{task}.option_line': needs {{letter}} and {{text}} "
                              f"and nothing else, got {fields}")


def box_instruction(convention: str, width: int, height: int) -> str:
    """The answer-format sentence for a grounding prompt in ``convention``."""
    check_convention(convention)
    if convention == "pixel":
        return (f"Answer with the bounding box as [x0, y0, x1, y1] in pixel coordinates of this "
                f"{width}x{height} image (x to the right, y down, top-left corner first).")
    if convention == "norm1":
        return ("Answer with the bounding box as [x0, y0, x1, y1], coordinates normalised to 0-1 by the "
                "image width and height (top-left corner first).")
    if convention == "norm1000":
        return ("Answer with the bounding box as [x0, y0, x1, y1], integer coordinates normalised to 0-1000 "
                "(top-left corner first).")
    return ("Answer with the bounding box as [ymin, xmin, ymax, xmax], integer coordinates normalised to "
            "0-1000.")


def build_prompt(task: str, sample: Mapping[str, Any], model_convention: str = "pixel", *,
                 template: str | None = None, option_line: str | None = None) -> str:
    """The user prompt (text only; the image is passed separately) for ``task`` on ``sample``.

    ``template`` (default :data:`DEFAULT_PROMPTS`): ``vqa`` -> question, lettered options, "answer with the
    letter only"; ``caption`` -> the sample's instruction plus a one-sentence format hint; ``grounding`` ->
    the question plus the box format of ``model_convention``. ``option_line`` formats each VQA option.
    """
    check_prompt(task, template, option_line)
    question = str(sample["question"]).strip()
    values = {"question": question,
              **TASK_REGISTRY[task].values(sample, model_convention, option_line or OPTION_LINE)}
    return (template if template is not None else DEFAULT_PROMPTS[task]).format(**values)


def box_to_convention(box: Sequence[float], convention: str, width: int, height: int) -> list[float]:
    """Convert an inclusive pixel box ``[x0, y0, x1, y1]`` to ``convention`` (see the module docstring)."""
    check_convention(convention)
    x0, y0, x1, y1 = (float(v) for v in box)
    if convention == "pixel":
        return [x0, y0, x1, y1]
    ex0, ey0, ex1, ey1 = x0 / width, y0 / height, (x1 + 1) / width, (y1 + 1) / height
    if convention == "norm1":
        return [round(v, 3) for v in (ex0, ey0, ex1, ey1)]
    scaled = [round(v * 1000) for v in (ex0, ey0, ex1, ey1)]
    if convention == "norm1000":
        return [float(v) for v in scaled]
    return [float(scaled[1]), float(scaled[0]), float(scaled[3]), float(scaled[2])]


def target_text(task: str, sample: Mapping[str, Any], model_convention: str = "pixel") -> str:
    """The ideal answer text (training target): the letter, the reference caption, or the box."""
    if task == "vqa":
        return str(sample["answer"])
    if task == "caption":
        return str(sample["reference"])
    if task == "grounding":
        if sample.get("box") is None:
            raise ConfigError(f"sample {sample.get('sample_id')!r}: grounding sample without a box")
        vals = box_to_convention(sample["box"], model_convention, int(sample["width"]), int(sample["height"]))
        return box_text(vals)
    raise ConfigError(f"unknown VLM task '{task}'")
