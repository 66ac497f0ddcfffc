"""Parsing raw VLM outputs: multiple-choice letters/option text, cleaned captions, grounding boxes.

Every parser returns a :class:`Parsed` (never raises on model output): ``ok`` is False for an unparseable
answer, which the metrics count as wrong (VQA) / IoU 0 (grounding) and count in ``parse_failures``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medfm_robust.vlm.prompts import LETTERS, check_convention


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


# ------------------------------------------------------------------------------------------------- VQA

_SPECIAL = re.compile(
    r"<\|?/?(?:s|eos|bos|pad|end_of_turn|start_of_turn|im_end|im_start|endoftext)\|?>", re.I
)


def _strip_markup(text: str) -> str:
    text = _SPECIAL.sub(" ", text or "")
    text = re.sub(r"[*_`#]+", "", text)
    return text.strip()


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def parse_choice(text: str, options: Sequence[str]) -> Parsed:
    """Parse a multiple-choice answer to a letter.

    Accepted: a bare letter (``B``, ``(b)``, ``B.``), a cue + letter (``Answer: B``, ``The answer is b)``,
    ``option C``), a leading ``B) ...`` / ``B. ...``, the option text (exact after normalising case and
    punctuation, else the unique longest option contained as whole words in a verbose answer). Several
    different explicit letters, or no match, give ``ok=False``.
    """
    n = len(options)
    valid = LETTERS[:n]
    raw = _strip_markup(text)
    if not raw:
        return Parsed(False, None, "", "empty")
    cls = f"[{valid}{valid.lower()}]"
    found: list[tuple[str, str]] = []
    m = re.fullmatch(rf"[\s\(\[\"']*({cls})[\s\)\]\.\:,\"']*", raw)
    if m:
        found.append((m.group(1).upper(), "letter"))
    cue = r"(?:answer|option|choice|choose|select|pick)\s*(?:is|would be|:|=|-)?\s*(?:option\s*)?[:\-]?\s*"
    for m in re.finditer(rf"(?i:{cue})[\(\[]?({cls})(?![\w])", raw):
        letter = m.group(1)
        after = raw[m.end():]
        # "the answer is a lesion": a lower-case or article-like "A" followed by a word is not a letter.
        if (re.match(r"\s+[a-z]", after) and not _follows_option(after, options, letter.upper())
                and (letter.islower() or letter == "A")):
            continue
        found.append((letter.upper(), "cue_letter"))
    m = re.match(rf"^[\(\[]?({cls})[\)\]\.:](?:\s|$)", raw) or re.match(rf"^([{valid}])\s+is\b", raw)
    if m:
        found.append((m.group(1).upper(), "leading_letter"))
    for m in re.finditer(rf"[\(\[]([{valid}])[\)\]]", raw):
        found.append((m.group(1), "bracket_letter"))
    letters = list(dict.fromkeys(f[0] for f in found))
    if len(letters) == 1:
        return Parsed(True, letters[0], letters[0], found[0][1])
    text_hit = _match_option_text(raw, options)
    if text_hit is not None and (not letters or LETTERS[text_hit] in letters):
        return Parsed(True, LETTERS[text_hit], LETTERS[text_hit], "option_text")
    return Parsed(False, None, "", "ambiguous" if letters else "no_match")


def _follows_option(after: str, options: Sequence[str], letter: str) -> bool:
    idx = LETTERS.index(letter)
    return idx < len(options) and _norm(after).startswith(_norm(options[idx])) and bool(_norm(options[idx]))


def _match_option_text(raw: str, options: Sequence[str]) -> int | None:
    answer = _norm(raw)
    normed = [_norm(o) for o in options]
    exact = [i for i, o in enumerate(normed) if o and o == answer]
    if len(exact) == 1:
        return exact[0]
    padded = f" {answer} "
    hits = [i for i, o in enumerate(normed) if o and f" {o} " in padded]
    if not hits:
        return None
    longest = max(len(normed[i]) for i in hits)
    best = [i for i in hits if len(normed[i]) == longest]
    if len(best) != 1:
        return None
    # Every other hit must be part of the best one ("small" inside "very small"), else it is ambiguous.
    if any(f" {normed[i]} " not in f" {normed[best[0]]} " for i in hits if i != best[0]):
        return None
    return best[0]


# --------------------------------------------------------------------------------------------- caption

_CAPTION_PREFIX = re.compile(r"^(?:caption|description|answer|assistant|model|response)\s*:\s*", re.I)


def clean_caption(text: str) -> Parsed:
    """Strip special tokens, markdown, a leading ``Caption:``-style label, surrounding quotes and
    repeated whitespace; ``ok=False`` when nothing is left."""
    cleaned = _strip_markup(text)
    cleaned = _CAPTION_PREFIX.sub("", cleaned)
    cleaned = " ".join(cleaned.split()).strip().strip("\"'“”").strip()
    if not cleaned:
        return Parsed(False, None, "", "empty")
    return Parsed(True, cleaned, cleaned, "caption")


# ------------------------------------------------------------------------------------------- grounding

# A number not glued to a name ("x0", "y1" are labels, not values).
_NUMBER = r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_JSON_KEYS = (
    ("x0", "y0", "x1", "y1"), ("x_min", "y_min", "x_max", "y_max"), ("xmin", "ymin", "xmax", "ymax"),
    ("left", "top", "right", "bottom"), ("x1", "y1", "x2", "y2"),
)


def _numbers(text: str) -> list[float]:
    return [float(v) for v in re.findall(_NUMBER, text)]


def _json_box(text: str) -> tuple[list[float], str] | None:
    """A box from a JSON object/list anywhere in ``text`` (keys bbox/box/bbox_2d/box_2d or corner names)."""
    for m in re.finditer(r"[\{\[]", text):
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[m.start():])
        except ValueError:
            continue
        found = _box_in_obj(obj)
        if found is not None:
            return found
    return None


def _box_in_obj(obj: Any) -> tuple[list[float], str] | None:
    if isinstance(obj, list):
        if len(obj) == 4 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in obj):
            return [float(v) for v in obj], "json_list"
        for item in obj:
            found = _box_in_obj(item)
            if found is not None:
                return found
        return None
    if isinstance(obj, dict):
        lower = {str(k).lower(): v for k, v in obj.items()}
        for key in ("box_2d", "bbox_2d", "bbox", "box", "bounding_box", "boundingbox", "coordinates"):
            if key in lower:
                found = _box_in_obj(lower[key])
                if found is not None:
                    return found[0], "json_box_2d" if key == "box_2d" else "json"
        for keys in _JSON_KEYS:
            if all(k in lower for k in keys):
                try:
                    return [float(lower[k]) for k in keys], "json_corners"
                except (TypeError, ValueError):
                    return None
        for value in lower.values():
            if isinstance(value, dict | list):
                found = _box_in_obj(value)
                if found is not None:
                    return found
    return None


def find_box_numbers(text: str) -> tuple[list[float], str] | None:
    """The four box numbers in ``text`` and the form they were found in, or None.

    Forms tried in order: JSON (``{"bbox": [...]}``, ``{"x_min": ..}``, Gemini's ``[{"box_2d": ...}]``),
    ``<box>...</box>`` / ``<|box_start|>...<|box_end|>``, ``[a, b, c, d]``, ``(a, b), (c, d)``,
    ``(a, b, c, d)``, then the first four numbers anywhere.
    """
    raw = text or ""
    found = _json_box(raw)
    if found is not None:
        return found
    m = re.search(r"<(?:box|\|box_start\|)>(.*?)<(?:/box|\|box_end\|)>", raw, re.S | re.I)
    if m and len(nums := _numbers(m.group(1))) >= 4:
        return nums[:4], "box_tag"
    sep = r"\s*[,;\s]\s*"
    m = re.search(rf"\[\s*({_NUMBER}){sep}({_NUMBER}){sep}({_NUMBER}){sep}({_NUMBER})\s*\]", raw)
    if m:
        return [float(g) for g in m.groups()], "brackets"
    pair = rf"\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)"
    m = re.search(rf"{pair}\s*[,\-–to ]*\s*{pair}", raw)
    if m:
        return [float(g) for g in m.groups()], "point_pairs"
    m = re.search(rf"\(\s*({_NUMBER}){sep}({_NUMBER}){sep}({_NUMBER}){sep}({_NUMBER})\s*\)", raw)
    if m:
        return [float(g) for g in m.groups()], "parentheses"
    nums = _numbers(raw)
    if len(nums) >= 4:
        return nums[:4], "numbers"
    return None


def box_from_convention(values: Sequence[float], convention: str, width: int, height: int) -> list[float]:
    """Four numbers in ``convention`` -> inclusive pixel box ``[x0, y0, x1, y1]`` (floats).

    Corners are re-ordered when swapped; edges are clamped to the image (``[0, W] x [0, H]``).
    """
    check_convention(convention)
    a, b, c, d = (float(v) for v in values)
    if convention == "pixel":
        ex0, ey0, ex1, ey1 = a, b, c + 1, d + 1
    elif convention == "norm1":
        ex0, ey0, ex1, ey1 = a * width, b * height, c * width, d * height
    elif convention == "norm1000":
        ex0, ey0, ex1, ey1 = a / 1000 * width, b / 1000 * height, c / 1000 * width, d / 1000 * height
    else:  # yxyx1000
        ex0, ey0, ex1, ey1 = b / 1000 * width, a / 1000 * height, d / 1000 * width, c / 1000 * height
    if convention == "pixel" and c < a:
        ex0, ex1 = c, a + 1
    elif ex1 < ex0:
        ex0, ex1 = ex1, ex0
    if convention == "pixel" and d < b:
        ey0, ey1 = d, b + 1
    elif ey1 < ey0:
        ey0, ey1 = ey1, ey0
    ex0, ex1 = min(max(ex0, 0.0), width), min(max(ex1, 0.0), width)
    ey0, ey1 = min(max(ey0, 0.0), height), min(max(ey1, 0.0), height)
    return [round(ex0, 3), round(ey0, 3), round(ex1 - 1, 3), round(ey1 - 1, 3)]


def parse_box(text: str, convention: str, width: int, height: int) -> Parsed:
    """Parse a grounding answer in the model's ``convention`` to an inclusive pixel box (floats).

    A JSON ``box_2d`` key is Gemini's ``[ymin, xmin, ymax, xmax]`` on 0-1000 by definition and is read as
    ``yxyx1000`` whatever ``convention`` says (``method`` records it). Swapped corners are re-ordered and
    the box is clamped to the image; fewer than four numbers is a parse failure.
    """
    check_convention(convention)
    found = find_box_numbers(_SPECIAL.sub(" ", text or ""))
    if found is None:
        return Parsed(False, None, "", "no_box" if (text or "").strip() else "empty")
    values, form = found
    if form == "json_box_2d" and convention != "yxyx1000":
        form = "json_box_2d(yxyx1000)"
        convention = "yxyx1000"  # Gemini's box_2d is [ymin, xmin, ymax, xmax] / 1000 by definition
    box = box_from_convention(values, convention, width, height)
    text_out = "[" + ", ".join(f"{v:g}" for v in box) + "]"
    return Parsed(True, box, text_out, form)


# ------------------------------------------------------------------------------------------ dispatcher


def parse_answer(task: str, text: str, sample: Mapping[str, Any], convention: str = "pixel") -> Parsed:
    """Parse ``text`` for ``task`` given the ``sample`` (options / image size) and the model's box
    ``convention`` (grounding only)."""
    if task == "vqa":
        return parse_choice(text, list(sample["options"]))
    if task == "caption":
        return clean_caption(text)
    if task == "grounding":
        return parse_box(text, convention, int(sample["width"]), int(sample["height"]))
    raise ValueError(f"unknown VLM task '{task}'")
