"""VLM metrics: caption scores equal pycocoevalcap, box IoU, the per-sample table and summaries."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from medfm_robust.errors import ConfigError
from medfm_robust.metrics.captions import caption_scores, java_available, simple_tokenize
from medfm_robust.metrics.vlm import (
    box_iou,
    conditions_from,
    grounding_summary,
    summarise,
    vqa_accuracy,
)
from medfm_robust.vlm.scoring import score_outputs

REFS = [
    "Axial CT of the chest showing a small nodule in the right lung.",
    "MRI of the brain with a large lesion in the left hemisphere.",
    "Plain X-ray of the left hand, no fracture.",
    "Ultrasound of the breast showing a hypoechoic mass.",
]
HYPS = [
    "CT of the chest with a small nodule in the right lung.",
    "Brain MRI showing a lesion.",
    "X-ray of the right hand showing a fracture",
    "ultrasound of the breast showing a hypoechoic mass",
]


def test_simple_tokenize() -> None:
    assert simple_tokenize("Axial CT, 5-mm slice.  (Left)") == "axial ct 5 mm slice left"
    assert simple_tokenize("") == ""


def test_caption_scores_equal_pycocoevalcap() -> None:
    ours = caption_scores(REFS, HYPS)
    gts = {i: [simple_tokenize(r)] for i, r in enumerate(REFS)}
    res = {i: [simple_tokenize(h)] for i, h in enumerate(HYPS)}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    for k in range(4):
        assert ours.corpus[f"bleu{k + 1}"] == pytest.approx(bleu[k], abs=1e-12)
        np.testing.assert_allclose(ours.per_sample[f"bleu{k + 1}"], bleu_each[k], atol=1e-12)
    assert ours.corpus["rouge_l"] == pytest.approx(rouge, abs=1e-12)
    np.testing.assert_allclose(ours.per_sample["rouge_l"], rouge_each, atol=1e-12)
    assert ours.corpus["cider"] == pytest.approx(cider, abs=1e-12)
    np.testing.assert_allclose(ours.per_sample["cider"], cider_each, atol=1e-12)
    # The last pair is identical after tokenisation: perfect BLEU/ROUGE for that sample.
    assert ours.per_sample["bleu4"][3] == pytest.approx(1.0, abs=1e-6)
    assert ours.per_sample["rouge_l"][3] == pytest.approx(1.0)


def test_caption_scores_known_values() -> None:
    # "the cat" vs "the cat sat on the mat": unigram precision 1, brevity penalty exp(1 - 6/2).
    sc = caption_scores(["the cat sat on the mat"], ["The cat."])
    assert sc.corpus["bleu1"] == pytest.approx(math.exp(-2), rel=1e-6)
    beta2 = 1.2**2
    p, r = 1.0, 2 / 6
    assert sc.corpus["rouge_l"] == pytest.approx((1 + beta2) * p * r / (r + beta2 * p), rel=1e-9)


def test_empty_hypothesis_scores_zero_and_lowers_corpus_bleu() -> None:
    full = caption_scores(REFS, HYPS)
    with_empty = caption_scores(REFS, [*HYPS[:3], ""])
    for k in ("bleu1", "bleu4", "rouge_l", "cider"):
        assert with_empty.per_sample[k][3] == 0.0
    assert with_empty.corpus["bleu1"] < full.corpus["bleu1"]
    assert with_empty.corpus["rouge_l"] == pytest.approx(full.per_sample["rouge_l"][:3].sum() / 4)


@pytest.mark.slow
def test_meteor_only_with_java() -> None:
    if not java_available():
        with pytest.raises(ConfigError, match="Java"):
            caption_scores(REFS[:1], HYPS[:1], meteor=True)
        return
    sc = caption_scores(REFS, [REFS[0], *HYPS[1:3], ""], meteor=True)  # ~15 s: starts METEOR's JVM
    m = sc.per_sample["meteor"]
    assert m[0] > 0.9 and 0 < m[1] < m[0] and m[3] == 0.0


def test_box_iou_inclusive_pixels() -> None:
    assert box_iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0
    assert box_iou([0, 0, 9, 9], [0, 0, 4, 9]) == pytest.approx(0.5)
    assert box_iou([0, 0, 9, 9], [10, 10, 19, 19]) == 0.0
    assert box_iou([0, 0, 9, 9], [5, 5, 14, 14]) == pytest.approx(25 / 175)
    assert box_iou(None, [0, 0, 1, 1]) == 0.0
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 1.0  # one pixel


def test_vqa_and_grounding_summaries() -> None:
    assert vqa_accuracy([True, False, False, True]) == 0.5
    assert math.isnan(vqa_accuracy([]))
    s = grounding_summary([0.9, 0.5, 0.49, 0.0])
    assert s["acc_iou50"] == 0.5 and s["mean_iou"] == pytest.approx(0.4725)


def _samples(task: str) -> pd.DataFrame:
    base = {"dataset": "d", "modality": "ct", "height": 100, "width": 200}
    if task == "vqa":
        opts = ["left", "right", "upper", "lower"]
        return pd.DataFrame([{**base, "sample_id": f"s{i}", "options": opts, "answer": "B",
                              "reference": "right", "box": None} for i in range(4)])
    if task == "grounding":
        return pd.DataFrame([{**base, "sample_id": f"g{i}", "options": [], "answer": "", "reference": "",
                              "box": [20, 10, 59, 49]} for i in range(4)])
    return pd.DataFrame([{**base, "sample_id": f"c{i}", "options": [], "answer": r, "reference": r,
                          "box": None} for i, r in enumerate(REFS)])


def test_score_outputs_vqa_counts_unparseable_as_wrong() -> None:
    cond = conditions_from(_samples("vqa"))
    out = score_outputs("vqa", cond, ["B", "The answer is (B) right.", "right or left?", "A"],
                        model="m", model_revision="r1")
    assert list(out["correct"]) == [True, True, False, False]
    assert list(out["parse_ok"]) == [True, True, False, True]
    assert list(out["raw_output"])[2] == "right or left?" and list(out["parsed"])[2] == ""
    assert set(out.columns) >= {"sample_id", "model", "task", "dataset", "modality", "perturbation",
                                "category", "level", "ssim", "in_band", "raw_output", "parsed", "reference",
                                "correct", "model_revision"}
    summ = summarise(out)
    assert summ.loc[0, "accuracy"] == 0.5 and summ.loc[0, "parse_failures"] == 1 and summ.loc[0, "n"] == 4


def test_score_outputs_grounding_conventions_and_failures() -> None:
    cond = conditions_from(_samples("grounding"), {"perturbation": "rotation", "category": "base", "level": 3,
                                                    "ssim": 0.8, "in_band": True})
    outs = ["[20, 10, 59, 49]", "[0.1, 0.1, 0.3, 0.5]", "I cannot see a lesion.", "[100, 100, 120, 120]"]
    px = score_outputs("grounding", cond, outs, model="m", model_revision="r", convention="pixel")
    assert px["iou"].iloc[0] == 1.0 and px["hit"].iloc[0]
    assert px["iou"].iloc[2] == 0.0 and not px["parse_ok"].iloc[2] and not px["hit"].iloc[2]
    n1 = score_outputs("grounding", cond, outs, model="m", model_revision="r", convention="norm1")
    # [0.1, 0.1, 0.3, 0.5] of 200x100 = edges x 20..60, y 10..50 = the reference box exactly.
    assert n1["iou"].iloc[1] == pytest.approx(1.0)
    assert (px["level"] == 3).all() and (px["perturbation"] == "rotation").all()
    assert px["reference"].iloc[0] == "[20, 10, 59, 49]"


def test_score_outputs_caption_per_group_equals_direct_scores() -> None:
    samples = _samples("caption")
    clean = conditions_from(samples)
    noisy = conditions_from(samples, {"perturbation": "gaussian_noise", "category": "base", "level": 1,
                                      "ssim": 0.9, "in_band": True})
    cond = pd.concat([clean, noisy], ignore_index=True)
    outs = [*HYPS, "Caption: CT of the chest.", "", "x-ray", "ultrasound"]
    table = score_outputs("caption", cond, outs, model="m", model_revision="r")
    assert table.loc[table["perturbation"] == "clean", "bleu4"].round(12).tolist() == list(
        np.round(caption_scores(REFS, HYPS).per_sample["bleu4"], 12))
    noisy_rows = table[table["perturbation"] == "gaussian_noise"].set_index("sample_id")
    assert noisy_rows.loc["c0", "parsed"] == "CT of the chest." and noisy_rows.loc["c1", "cider"] == 0.0
    summ = summarise(table).set_index("perturbation")
    assert summ.loc["clean", "bleu4"] == pytest.approx(caption_scores(REFS, HYPS).corpus["bleu4"])
    assert summ.loc["gaussian_noise", "parse_failures"] == 1
