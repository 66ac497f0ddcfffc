"""Multiple-choice answers: the option letter (or the option's text) in a raw output, and abstentions."""

from __future__ import annotations

import re
from collections.abc import Sequence

from medfm_robust.vlm.parsing.common import Parsed, strip_markup
from medfm_robust.vlm.prompts import LETTERS
from medfm_robust.vlm.tasks import REGISTRY as TASK_REGISTRY


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
    raw = strip_markup(text)
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
    return bool(ABSTENTION.search(strip_markup(text)))


def abstained(text: str, parsed: Parsed, task: str) -> bool:
    """An abstention: the output declines to answer and, for VQA/grounding, no answer was recovered."""
    spec = TASK_REGISTRY.get(task)
    if spec is not None and spec.answer != "text" and parsed.ok:  # vqa, grounding
        return False
    return is_abstention(text)
