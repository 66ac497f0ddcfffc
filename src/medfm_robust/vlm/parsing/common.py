"""The parse result and what every parser shares: stripping special tokens / markdown; the caption cleaner."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Parsed:
    """Result of parsing one raw output.

    ``value``: VQA -> the letter (``"A"``..), caption -> the cleaned caption, grounding -> the box as
    inclusive pixel floats ``[x0, y0, x1, y1]`` of the stored image (None when not ok). ``text`` is what
    goes into the metrics table's ``parsed`` column; ``method`` says how it was found (or why not).
    """

    ok: bool
    value: Any
    text: str
    method: str


SPECIAL_TOKENS = re.compile(
    r"<\|?/?(?:s|eos|bos|pad|end_of_turn|start_of_turn|im_end|im_start|endoftext)\|?>", re.I
)


def strip_markup(text: str) -> str:
    """``text`` without special tokens (:data:`SPECIAL_TOKENS`) and markdown emphasis, stripped."""
    text = SPECIAL_TOKENS.sub(" ", text or "")
    text = re.sub(r"[*_`#]+", "", text)
    return text.strip()


_CAPTION_PREFIX = re.compile(r"^(?:caption|description|answer|assistant|model|response)\s*:\s*", re.I)


def clean_caption(text: str) -> Parsed:
    """Strip special tokens, markdown, a leading ``Caption:``-style label, surrounding quotes and
    repeated whitespace; ``ok=False`` when nothing is left."""
    cleaned = strip_markup(text)
    cleaned = _CAPTION_PREFIX.sub("", cleaned)
    cleaned = " ".join(cleaned.split()).strip().strip("\"'“”").strip()
    if not cleaned:
        return Parsed(False, None, "", "empty")
    return Parsed(True, cleaned, cleaned, "caption")
