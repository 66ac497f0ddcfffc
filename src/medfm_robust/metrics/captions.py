"""Captioning metrics through pycocoevalcap: BLEU-1..4, ROUGE-L, CIDEr(-D) and, where Java exists, METEOR.

Tokenisation (documented choice): by default a pure-Python tokeniser, :func:`simple_tokenize` — lower-case,
every character that is neither a letter, a digit, ``_`` nor whitespace becomes a space, then whitespace
split (so ``"Axial CT, 5-mm slice."`` -> ``"axial ct 5 mm slice"``). pycocoevalcap's own ``PTBTokenizer``
(Stanford CoreNLP, needs Java) can be selected with ``tokenizer="ptb"``; it differs mainly on clitics and
hyphens. Each sample has one reference.

Scores are pycocoevalcap's: BLEU is corpus-level (n-gram counts pooled over the set, "closest" brevity
penalty) with per-sample sentence BLEU from the same scorer; ROUGE-L (beta 1.2) and CIDEr (CIDEr-D,
x10, document frequencies from the references of the scored set) are means of per-sample values. Scoring
one (perturbation, level) group at a time over the same samples keeps CIDEr's IDF identical across
conditions. An empty hypothesis scores 0 on every metric (pycocoevalcap's ROUGE cannot take it).
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medfm_robust.errors import ConfigError

CAPTION_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider")
#: Per-sample BLEU sufficient statistics (pycocoevalcap's own counts): hypothesis and reference length,
#: n-gram guesses and clipped matches for n = 1..4. Summed over any set of samples (a bootstrap replicate
#: too) they give that set's corpus BLEU (:func:`corpus_bleu`).
BLEU_STATS = ("bleu_testlen", "bleu_reflen", *(f"bleu_guess{k}" for k in range(1, 5)),
              *(f"bleu_correct{k}" for k in range(1, 5)))


def simple_tokenize(text: str) -> str:
    """Lower-case, punctuation to spaces, whitespace-normalised (space-joined tokens)."""
    return " ".join(re.sub(r"[^\w\s]", " ", str(text or "").lower()).split())


@functools.cache
def java_available() -> bool:
    """True when a working ``java`` is on PATH (needed by PTBTokenizer and METEOR)."""
    exe = shutil.which("java")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _ptb_tokenize(texts: Sequence[str]) -> list[str]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    data = {i: [{"caption": t or ""}] for i, t in enumerate(texts)}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        out = PTBTokenizer().tokenize(data)
    return [out[i][0] for i in range(len(texts))]


def tokenize_all(texts: Sequence[str], tokenizer: str = "simple") -> list[str]:
    """Tokenise ``texts`` with ``simple`` (default) or ``ptb`` (needs Java; else ``ConfigError``)."""
    if tokenizer == "simple":
        return [simple_tokenize(t) for t in texts]
    if tokenizer == "ptb":
        if not java_available():
            raise ConfigError("caption tokenizer 'ptb' needs Java (no working `java` on PATH); use 'simple'")
        return _ptb_tokenize(texts)
    raise ConfigError(f"unknown caption tokenizer '{tokenizer}' (simple or ptb)")


@dataclass(frozen=True)
class CaptionScores:
    """``corpus``: metric -> set-level value; ``per_sample``: metric -> array (one per input pair)."""

    corpus: dict[str, float]
    per_sample: dict[str, np.ndarray]


def caption_scores(
    references: Sequence[str],
    hypotheses: Sequence[str],
    *,
    tokenizer: str = "simple",
    meteor: bool = False,
) -> CaptionScores:
    """BLEU-1..4, ROUGE-L, CIDEr (and METEOR when ``meteor`` and Java is present) of ``hypotheses``
    against one reference each. ``meteor=True`` without Java raises ``ConfigError``."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(references) != len(hypotheses):
        raise ValueError("references and hypotheses differ in length")
    n = len(references)
    names = [*CAPTION_METRICS, *(["meteor"] if meteor else [])]
    if n == 0:
        empty = {k: np.zeros(0) for k in [*names, *BLEU_STATS]}
        return CaptionScores({k: float("nan") for k in names}, empty)
    refs = tokenize_all(references, tokenizer)
    hyps = tokenize_all(hypotheses, tokenizer)
    gts = {i: [refs[i]] for i in range(n)}
    res = {i: [hyps[i]] for i in range(n)}
    corpus: dict[str, float] = {}
    per: dict[str, np.ndarray] = {}
    bleu, bleu_each, stats = _bleu(refs, hyps)
    for k in range(4):
        corpus[f"bleu{k + 1}"] = float(bleu[k])
        per[f"bleu{k + 1}"] = np.asarray(bleu_each[k], dtype=np.float64)
    per.update(stats)
    nonempty = [i for i in range(n) if hyps[i].strip()]
    rouge = np.zeros(n)
    if nonempty:
        _, r_each = Rouge().compute_score({i: gts[i] for i in nonempty}, {i: res[i] for i in nonempty})
        rouge[nonempty] = np.asarray(r_each, dtype=np.float64)
    per["rouge_l"] = rouge
    corpus["rouge_l"] = float(rouge.mean())
    _, c_each = Cider().compute_score(gts, res)
    per["cider"] = np.asarray(c_each, dtype=np.float64)
    corpus["cider"] = float(per["cider"].mean())
    if meteor:
        if not java_available():
            raise ConfigError("METEOR needs Java (no working `java` on PATH); disable it")
        m = np.zeros(n)
        if nonempty:
            _, m_each = _meteor_scorer().compute_score({i: gts[i] for i in nonempty},
                                                       {i: res[i] for i in nonempty})
            m[nonempty] = np.asarray(m_each, dtype=np.float64)
        per["meteor"] = m
        corpus["meteor"] = float(m.mean())
    return CaptionScores(corpus, per)


def _bleu(refs: Sequence[str], hyps: Sequence[str]) -> tuple[list[float], list[list[float]],
                                                             dict[str, np.ndarray]]:
    """pycocoevalcap's BLEU-1..4 (corpus, per sample) of tokenised ``hyps`` against one reference each, as
    ``Bleu(4).compute_score`` computes them, plus the per-sample :data:`BLEU_STATS` (float64 counts)."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    scorer = BleuScorer(n=4)
    for ref, hyp in zip(refs, hyps, strict=True):
        scorer += (hyp, [ref])
    with contextlib.redirect_stdout(io.StringIO()):
        corpus, each = scorer.compute_score(option="closest", verbose=0)
    comps = scorer.ctest
    stats = {"bleu_testlen": [c["testlen"] for c in comps],
             "bleu_reflen": [min((abs(r - c["testlen"]), r) for r in c["reflen"])[1] for c in comps]}
    for k in range(4):
        stats[f"bleu_guess{k + 1}"] = [c["guess"][k] for c in comps]
        stats[f"bleu_correct{k + 1}"] = [c["correct"][k] for c in comps]
    return corpus, each, {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}


def corpus_bleu(sums: Mapping[str, np.ndarray | float], n: int = 4) -> np.ndarray:
    """Corpus BLEU-``n`` from summed :data:`BLEU_STATS` (arrays of any one shape, e.g. groups x bootstrap
    replicates), with pycocoevalcap's formula: geometric mean of ``(correct + 1e-15) / (guess + 1e-9)`` over
    1..n-grams times the brevity penalty ``exp(1 - reflen / testlen)`` when the output is shorter."""
    small, tiny = 1e-9, 1e-15
    score = np.ones_like(np.asarray(sums["bleu_testlen"], dtype=np.float64))
    for k in range(1, n + 1):
        correct, guess = np.asarray(sums[f"bleu_correct{k}"]), np.asarray(sums[f"bleu_guess{k}"])
        score = score * (correct + tiny) / (guess + small)
    score = score ** (1.0 / n)
    ratio = (np.asarray(sums["bleu_testlen"]) + tiny) / (np.asarray(sums["bleu_reflen"]) + small)
    with np.errstate(divide="ignore", over="ignore"):
        penalty = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return score * penalty


@functools.cache
def _meteor_scorer() -> Any:
    """One METEOR scorer (a Java subprocess, ~8 s to start) per process, reused by every call."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def meteor_enabled(setting: bool | str) -> bool:
    """Resolve a ``meteor`` setting (``True``, ``False`` or ``"auto"`` = when Java is present)."""
    if setting == "auto":
        return java_available()
    return bool(setting)
