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


#: Unambiguous synonyms, each mapped to one canonical spelling before option text is compared (phrases
#: first; whole words only). Kept small on purpose: a synonym here must never name a different option.
SYNONYMS: tuple[tuple[str, str], ...] = (
    ("computed tomography", "ct"), ("computerized tomography", "ct"), ("cat scan", "ct"),
    ("magnetic resonance imaging", "mri"), ("magnetic resonance", "mri"), ("mr imaging", "mri"),
    ("x ray", "xray"), ("radiograph", "xray"), ("radiography", "xray"),
    ("ultrasonography", "ultrasound"), ("sonography", "ultrasound"),
    ("optical coherence tomography", "oct"), ("dermoscopy", "dermatoscopy"),
    ("fundus photograph", "fundus photography"),
    ("one", "1"), ("two", "2"), ("three", "3"), ("four", "4"), ("five", "5"),
    ("six", "6"), ("seven", "7"), ("eight", "8"), ("nine", "9"), ("ten", "10"),
    ("true", "yes"), ("false", "no"),
)


def _canon(text: str) -> str:
    """:func:`_norm` plus :data:`SYNONYMS` replaced by their canonical spelling."""
    out = f" {_norm(text)} "
    for phrase, canon in SYNONYMS:
        out = out.replace(f" {phrase} ", f" {canon} ")
    return " ".join(out.split())


# Words that may follow an answer letter without making it an article ("the answer is a because ...").
_CONNECTIVES = (r"(?:because|since|as|which|given|due|based|with|from|in|for|here|now|then|and|is|was|seems|"
                r"appears|looks|fits|matches|would|should|must)\b")
_NEGATION = re.compile(r"(?:\bnot|n't|\bnever|rather than|instead of|\bexcept|\bexclude|\brule out)\s+"
                       r"(?:the\s+)?(?:option\s+|choice\s+|answer\s+)?[\(\[]?$", re.I)


def _letter_patterns(cls: str) -> list[tuple[str, re.Pattern[str], bool]]:
    """(method, pattern, strong) with the letter in group ``L``; ``cls`` is the letter class (both cases)."""
    up = cls.upper()
    L = rf"[\(\[\"']?(?P<L>{cls})(?![\w'’])"
    lead = r"(?:option|choice|letter)\s+"
    return [
        ("leading_letter", re.compile(rf"^[\(\[]?(?P<L>{cls})[\)\]\.:\-](?:\s|$)"), True),
        ("cue_letter", re.compile(
            rf"\b(?:answer|option|choice|letter)s?\s*(?:is|was|would be|will be|should be|must be|"
            rf"seems to be|appears to be|here is|=|:|-|–)?\s*(?:{lead})?[:\-]?\s*{L}", re.I), True),
        ("verb_letter", re.compile(
            rf"\b(?:choose|chose|select|selected|pick|picked|go with|going with|opt for|circle|mark)\s+"
            rf"(?:{lead})?{L}", re.I), True),
        ("its_letter", re.compile(
            rf"\b(?:it'?s|it is|it’s|it would be|it must be|it should be|that'?s|that is|this is|i'?d say|"
            rf"i would say|i'?ll say|i say|i think|i believe|i guess|my guess is|probably|most likely|"
            rf"likely|definitely|clearly|so|thus|hence|therefore)\s*,?\s+(?:{lead})?{L}", re.I), True),
        ("letter_is_correct", re.compile(
            rf"(?<![\w'’])[\(\[]?(?P<L>{up})[\)\]]?\s+(?:is|seems|appears|looks)\s+(?:to be\s+)?(?:the\s+)?"
            rf"(?:most\s+)?(?:correct|right|best|likely|answer|true)\b"), True),
        ("bracket_letter", re.compile(rf"[\(\[](?P<L>{cls})[\)\]]"), False),
        ("final_letter", re.compile(rf"(?:^|[\s,:;\-–])(?P<L>{up})[\s\.\!\)\]\"'”]*$"), True),
    ]


def _is_article(raw: str, m: re.Match[str], options: Sequence[str]) -> bool:
    """True when the matched letter reads as a word: ``a``/``A`` (or any lower-case letter) followed by a
    word that is not the option's own text nor a connective ("the answer is a lesion")."""
    letter = m.group("L")
    if letter.isupper() and letter != "A":
        return False
    after = raw[m.end("L"):]
    if not re.match(r"\s+[a-zA-Z]", after):
        return False
    if re.match(rf"\s+{_CONNECTIVES}", after, re.I):
        return False
    return not _follows_option(after, options, letter.upper())


def _alternatives(raw: str, cls: str) -> set[str]:
    """Letters offered as alternatives: ``A or B``, ``(A)/(B)``, ``A and B``, ``A, B``."""
    up = cls.upper()
    sep = r"\s*(?:,|/|\bor\b|\band\b|\bvs\.?|\bversus\b)\s*"
    pat = (rf"(?<![\w'’])(?P<b1>[\(\[])?(?P<a>{up})(?(b1)[\)\]]){sep}"
           rf"(?:(?:option|choice)\s+)?(?P<b2>[\(\[])?(?P<b>{up})(?(b2)[\)\]])(?![\w'’])")
    out: set[str] = set()
    for m in re.finditer(pat, raw):
        if m.group("a") != m.group("b"):
            out |= {m.group("a"), m.group("b")}
    for m in re.finditer(rf"[\(\[](?P<a>{cls})[\)\]]{sep}[\(\[](?P<b>{cls})[\)\]]", raw, re.I):
        if m.group("a").upper() != m.group("b").upper():
            out |= {m.group("a").upper(), m.group("b").upper()}
    return out


def _last_sentence_is_short(raw: str, end: int, max_words: int = 12) -> bool:
    start = max(raw.rfind(ch, 0, end) for ch in ".!?\n")
    return len(raw[start + 1 : end].split()) <= max_words


def parse_choice(text: str, options: Sequence[str]) -> Parsed:
    """Parse a multiple-choice answer to a letter, as a careful reader would, or leave it unparsed.

    Recovered: a bare letter (``B``, ``(b)``, ``B.``); a letter after a cue (``Answer: B``, ``the answer is
    (C)``, ``option D``, ``I'd go with B``, ``I think it's B``, ``so B``); ``B) text`` / ``B. text`` first;
    ``B is correct``; a letter in brackets anywhere; an upper-case letter ending a short last sentence
    (``Based on the image, B.``); else the option's text (normalised; :data:`SYNONYMS` applied), the unique
    longest option named, not negated. Unparsed (``ok=False``): several different letters (``A or B``, ``A,
    then B``), letters contradicted by the option text, a lone article ("the answer is a lesion"), nothing.
    Letters after a negation ("not A") are ignored. Explicit cues outrank brackets and final letters.
    """
    n = len(options)
    valid = LETTERS[:n]
    raw = _strip_markup(text)
    if not raw:
        return Parsed(False, None, "", "empty")
    cls = f"[{valid}{valid.lower()}]"
    if m := re.fullmatch(rf"[\s\(\[\"'“]*({cls})[\s\)\]\.\:,\!\"'”]*", raw):
        return Parsed(True, m.group(1).upper(), m.group(1).upper(), "letter")
    strong: dict[str, str] = {}
    weak: dict[str, str] = {}
    for method, pattern, is_strong in _letter_patterns(cls):
        for m in pattern.finditer(raw):
            if _is_article(raw, m, options) or _NEGATION.search(raw[: m.start("L")]):
                continue
            if method == "final_letter" and not _last_sentence_is_short(raw, m.start("L")):
                continue
            (strong if is_strong else weak).setdefault(m.group("L").upper(), method)
    alternatives = _alternatives(raw, cls)
    chosen = strong or weak
    letters = sorted(set(chosen) | alternatives)
    text_hit = _match_option_text(raw, options)
    if len(letters) == 1:
        letter = letters[0]
        if text_hit is not None and LETTERS[text_hit] != letter and _option_named_beside(raw, letter,
                                                                                         options):
            return Parsed(False, None, "", "conflict")
        return Parsed(True, letter, letter, chosen.get(letter, "letter"))
    if letters:
        return Parsed(False, None, "", "ambiguous")
    if text_hit is not None:
        return Parsed(True, LETTERS[text_hit], LETTERS[text_hit], "option_text")
    return Parsed(False, None, "", "no_match")


def _option_named_beside(raw: str, letter: str, options: Sequence[str]) -> bool:
    """True when ``letter`` is written as ``B) text`` / ``B. text`` whose text is a *different* option."""
    m = re.search(rf"(?<![\w'’])[\(\[]?{letter}[\)\]\.:]\s*(?P<t>[^\n\.;]+)", raw, re.I)
    if not m:
        return False
    named = _canon(m.group("t"))
    own = _canon(options[LETTERS.index(letter)])
    return bool(named) and not named.startswith(own) and any(
        named.startswith(_canon(o)) and _canon(o) for o in options)


def _follows_option(after: str, options: Sequence[str], letter: str) -> bool:
    idx = LETTERS.index(letter)
    return idx < len(options) and bool(_norm(options[idx])) and _norm(after).startswith(_norm(options[idx]))


def _match_option_text(raw: str, options: Sequence[str]) -> int | None:
    """Index of the option whose text the answer names (exact, else the unique longest option named as
    whole words and not negated, every other named option being part of it); None when unclear."""
    answer = _canon(raw)
    normed = [_canon(o) for o in options]
    exact = [i for i, o in enumerate(normed) if o and o == answer]
    if len(exact) == 1:
        return exact[0]
    padded = f" {answer} "
    hits = []
    for i, o in enumerate(normed):
        if not o:
            continue
        spots = [m.start() for m in re.finditer(re.escape(f" {o} "), padded)]
        if any(not re.search(r"\b(?:not|no|nor|neither|without|rather than|instead of)(?:\s+\w+){0,2}\s*$",
                             padded[: s + 1]) for s in spots):
            hits.append(i)
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


#: Phrases of an answer that declines to answer (refusal, "cannot determine", asks for the image).
ABSTENTION = re.compile(
    r"\b(?:can ?not|can't|can’t|unable to|not able to|impossible to|not possible to|"
    r"could not|couldn't|won't be able to)\s+(?:be\s+)?(?:determine|determined|tell|say|assess|answer|"
    r"identify|provide|see|view|access|evaluate|interpret|analy[sz]e|make|give|diagnose|confirm|locate|"
    r"describe|comment|offer)|"
    r"\b(?:no|not enough|insufficient|without (?:an?|the))\s+(?:image|information|context|data|details?)\s+"
    r"(?:is |was )?(?:provided|available|attached|given|to)|"
    r"\b(?:without|need|needs|require|requires|see|view)\s+(?:to see\s+)?(?:the|an|a)\s+"
    r"(?:actual\s+)?image\b|"
    r"\b(?:i'?m|i am) (?:sorry|not able|unable|not a (?:doctor|medical professional))|"
    r"\bas an ai\b|\bi (?:don't|do not) (?:know|have access)|\bnot sure\b|\bcannot be determined\b|"
    r"\bindeterminate\b|\bnone of the (?:above|options)\b|"
    r"\bconsult (?:a|your) (?:doctor|physician|radiologist)",
    re.I,
)


def is_abstention(text: str) -> bool:
    """True when ``text`` declines to answer ("cannot determine", "I'm sorry, I can't view images",
    "none of the above", "consult a radiologist"); an answer that still names an option is judged by the
    caller (see :func:`abstained`)."""
    return bool(ABSTENTION.search(_strip_markup(text)))


def abstained(text: str, parsed: Parsed, task: str) -> bool:
    """An abstention: the output declines to answer and, for VQA/grounding, no answer was recovered."""
    if task in ("vqa", "grounding") and parsed.ok:
        return False
    return is_abstention(text)


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
