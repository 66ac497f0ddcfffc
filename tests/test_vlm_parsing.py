"""Prompts and parsing on a table of realistic model outputs."""

from __future__ import annotations

import pytest

from medfm_robust.errors import ConfigError
from medfm_robust.vlm.parsing import (
    abstained,
    clean_caption,
    is_abstention,
    parse_answer,
    parse_box,
    parse_choice,
)
from medfm_robust.vlm.prompts import BOX_CONVENTIONS, box_to_convention, build_prompt, target_text

OPTIONS = ["Left kidney", "Right kidney", "small", "very small"]

# A reader recovers these without doubt: (raw output, letter). Options: OPTIONS above.
CHOICES = [
    # bare letters
    ("B", "B"), ("b", "B"), ("(B)", "B"), ("B.", "B"), ("[C]", "C"), ("  d  ", "D"), ('"C"', "C"),
    ("**D**", "D"), ("<end_of_turn>A<end_of_turn>", "A"), ("A</s>", "A"),
    # cue + letter
    ("Answer: B.", "B"), ("answer: d", "D"), ("The answer is A.", "A"), ("The answer is: b", "B"),
    ("**Answer:** D", "D"), ("Option A", "A"), ("The correct option is C.", "C"), ("Final answer: (D)", "D"),
    ("The answer is b) Right kidney", "B"), ("The correct answer is (C) small.", "C"),
    ("Correct option - D) very small", "D"), ("My answer would be B.", "B"), ("Answer = C", "C"),
    ("The best choice here is option D.", "D"),
    # verbs and hedges
    ("I would choose C.", "C"), ("I'd go with B.", "B"), ("I pick (A).", "A"), ("I think it's B.", "B"),
    ("I think it is D", "D"), ("I believe it's C, the lesion is tiny.", "C"), ("It's B.", "B"),
    ("I'd say A.", "A"), ("Probably C.", "C"), ("Most likely D.", "D"),
    ("Hmm, tricky one, but I think it's b because the lesion is on the right.", "B"),
    # leading letter with text
    ("C) small", "C"), ("B. Right kidney\nThe lesion is located in the right kidney.", "B"),
    ("(D) very small", "D"), ("A: Left kidney", "A"), ("B is the correct answer.", "B"),
    ("D is correct.", "D"), ("A is the most likely answer.", "A"),
    # letter named at the end of a short sentence, or in brackets
    ("Based on the image, B.", "B"), ("Looking at the image, (B) fits best.", "B"),
    ("The lesion looks tiny, so D.", "D"), ("Final: C", "C"),
    # "A" as an article is not a letter
    ("A lesion is visible, so the answer is B", "B"), ("A small nodule is seen; answer: D", "D"),
    ("There is a mass in the right kidney, so the answer is B.", "B"),
    ("A careful look shows it's C.", "C"),
    # negated letters are skipped
    ("It is not A; the answer is B.", "B"), ("Not C but D.", "D"),
    # the option's text or an unambiguous synonym
    ("Right kidney", "B"), ("right kidney.", "B"), ("The lesion is in the left kidney.", "A"),
    ("I think the lesion is very small compared with the organ.", "D"),
    ("Based on the image, the abnormality is best described as very small.</s>", "D"),
    ("It is not in the left kidney but in the right kidney.", "B"),
    ("B. Right kidney", "B"),
]

# Modality options: synonyms of the option text.
MODALITY_OPTIONS = ["CT", "MRI", "X-ray", "Ultrasound"]
SYNONYM_CHOICES = [
    ("This is a computed tomography scan.", "A"), ("Magnetic resonance imaging", "B"),
    ("A chest radiograph.", "C"), ("The image was acquired with sonography.", "D"), ("x ray", "C"),
]

# Ambiguous or absent answers: unparsed (counted as wrong).
FAILURES = [
    "", "   ", "I cannot determine this from the image.", "E", "A or B", "Either (A) or (B).",
    "Either the left kidney or the right kidney.", "The answer is a lesion.", "123", "B or C",
    "It could be A or D.", "(A) or (C), hard to tell.", "A, B", "A and B are both plausible.",
    "A lesion is visible.", "The answer is B. No wait, C.", "I think it's a cyst.",
    "Both kidneys look abnormal.", "B) Left kidney",
]


@pytest.mark.parametrize(("text", "letter"), CHOICES)
def test_choice_parsing(text: str, letter: str) -> None:
    p = parse_choice(text, OPTIONS)
    assert p.ok and p.value == letter, (text, p)


@pytest.mark.parametrize(("text", "letter"), SYNONYM_CHOICES)
def test_choice_synonyms(text: str, letter: str) -> None:
    p = parse_choice(text, MODALITY_OPTIONS)
    assert p.ok and p.value == letter, (text, p)


@pytest.mark.parametrize("text", FAILURES)
def test_choice_failures_are_counted_not_guessed(text: str) -> None:
    p = parse_choice(text, OPTIONS)
    assert not p.ok and p.value is None and p.text == "", (text, p)


ABSTAIN = ["I cannot determine this from the image.", "I'm sorry, but I can't view images.",
           "Without the actual image, I am unable to answer.", "Cannot be determined.",
           "No image was provided, so I can't say.", "None of the above.",
           "Please consult a radiologist for a diagnosis.", "I'm not able to identify the finding."]
NOT_ABSTAIN = ["B", "The answer is B.", "The lesion is in the right kidney.", "I can see a small lesion.",
               "The image shows a CT of the abdomen.", "It is not A; the answer is B."]


@pytest.mark.parametrize("text", ABSTAIN)
def test_abstentions_are_detected(text: str) -> None:
    assert is_abstention(text)
    assert abstained(text, parse_choice(text, OPTIONS), "vqa")


@pytest.mark.parametrize("text", NOT_ABSTAIN)
def test_answers_are_not_abstentions(text: str) -> None:
    assert not abstained(text, parse_choice(text, OPTIONS), "vqa")


def test_a_hedged_answer_that_names_an_option_is_not_an_abstention() -> None:
    text = "I cannot be certain without more views, but the answer is B."
    assert is_abstention(text) is False or parse_choice(text, OPTIONS).ok
    assert not abstained(text, parse_choice(text, OPTIONS), "vqa")


def test_parse_rate_of_the_tables() -> None:
    """Every phrasing of the tables is parsed as stated (the figure quoted in the change note)."""
    recovered = sum(parse_choice(t, OPTIONS).value == v for t, v in CHOICES)
    recovered += sum(parse_choice(t, MODALITY_OPTIONS).value == v for t, v in SYNONYM_CHOICES)
    unparsed = sum(not parse_choice(t, OPTIONS).ok for t in FAILURES)
    assert (recovered, unparsed) == (len(CHOICES) + len(SYNONYM_CHOICES), len(FAILURES))


def test_letters_beyond_the_options_are_rejected() -> None:
    assert not parse_choice("C", ["yes", "no"]).ok
    assert parse_choice("B", ["yes", "no"]).value == "B"


def test_captions_are_cleaned() -> None:
    assert clean_caption('Caption: "Axial CT of the chest."<end_of_turn>').value == "Axial CT of the chest."
    assert clean_caption("  **MRI**   of the\n brain  </s>").value == "MRI of the brain"
    assert not clean_caption("<eos>").ok


# (text, convention, expected inclusive pixel box) for a 200 x 100 (W x H) image
BOXES = [
    ("[20, 10, 59, 49]", "pixel", [20, 10, 59, 49]),
    ("The bounding box is [20, 10, 59, 49].", "pixel", [20, 10, 59, 49]),
    ("(20, 10), (59, 49)", "pixel", [20, 10, 59, 49]),
    ("(20,10),(59,49)", "pixel", [20, 10, 59, 49]),
    ("<box>20 10 59 49</box>", "pixel", [20, 10, 59, 49]),
    ('{"bbox": [20, 10, 59, 49]}', "pixel", [20, 10, 59, 49]),
    ('```json\n{"x_min": 20, "y_min": 10, "x_max": 59, "y_max": 49}\n```', "pixel", [20, 10, 59, 49]),
    ("[59, 49, 20, 10]", "pixel", [20, 10, 59, 49]),  # swapped corners
    ("[0.1, 0.1, 0.3, 0.5]", "norm1", [20, 10, 59, 49]),
    ("x0=0.1, y0=0.1, x1=0.3, y1=0.5", "norm1", [20, 10, 59, 49]),
    ("[100, 100, 300, 500]", "norm1000", [20, 10, 59, 49]),
    ("<|box_start|>(100,100),(300,500)<|box_end|>", "norm1000", [20, 10, 59, 49]),
    ("[100, 100, 500, 300]", "yxyx1000", [20, 10, 59, 49]),
    ('[{"box_2d": [100, 100, 500, 300], "label": "lesion"}]', "yxyx1000", [20, 10, 59, 49]),
    ('```json\n[{"box_2d": [100, 100, 500, 300]}]\n```', "pixel", [20, 10, 59, 49]),  # box_2d is yxyx/1000
    ("[-5, -5, 250, 120]", "pixel", [0, 0, 199, 99]),  # clamped to the image
]


@pytest.mark.parametrize(("text", "convention", "box"), BOXES)
def test_box_parsing(text: str, convention: str, box: list[int]) -> None:
    p = parse_box(text, convention, width=200, height=100)
    assert p.ok, (text, p)
    assert p.value == pytest.approx(box, abs=1e-6), (text, p)


@pytest.mark.parametrize(
    "text", ["", "No lesion is visible.", "[12, 30]", "<box></box>", "coordinates: a, b, c, d"]
)
def test_box_garbage(text: str) -> None:
    p = parse_box(text, "pixel", 200, 100)
    assert not p.ok and p.value is None


SAMPLE = {"sample_id": "s1", "question": "Where is the lesion?",
          "options": ["left", "right", "upper", "lower"], "answer": "C", "reference": "upper",
          "box": [20, 10, 59, 49], "width": 200, "height": 100}


@pytest.mark.parametrize("convention", BOX_CONVENTIONS)
def test_target_text_round_trips_through_the_parser(convention: str) -> None:
    text = target_text("grounding", SAMPLE, convention)
    p = parse_answer("grounding", text, SAMPLE, convention)
    assert p.ok and p.value == pytest.approx(SAMPLE["box"], abs=1e-6)
    expected = {"pixel": "[20, 10, 59, 49]", "norm1": "[0.1, 0.1, 0.3, 0.5]",
                "norm1000": "[100, 100, 300, 500]", "yxyx1000": "[100, 100, 500, 300]"}
    assert text == expected[convention]


def test_prompts() -> None:
    vqa = build_prompt("vqa", SAMPLE)
    assert "A. left\nB. right\nC. upper\nD. lower" in vqa and "letter" in vqa
    assert parse_answer("vqa", target_text("vqa", SAMPLE), SAMPLE).value == "C"
    assert "200x100" in build_prompt("grounding", SAMPLE, "pixel")
    assert "0-1000" in build_prompt("grounding", SAMPLE, "norm1000")
    assert "ymin" in build_prompt("grounding", SAMPLE, "yxyx1000")
    assert build_prompt("caption", {**SAMPLE, "question": "Describe this image."}).startswith("Describe")
    with pytest.raises(ConfigError, match="box convention"):
        build_prompt("grounding", SAMPLE, "xywh")
    with pytest.raises(ConfigError):
        build_prompt("vqa", {**SAMPLE, "options": ["only"]})
    assert box_to_convention([0, 0, 199, 99], "norm1", 200, 100) == [0.0, 0.0, 1.0, 1.0]


def test_cli_parse(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from medfm_robust.cli import main

    assert main(["vlm-parse", "--task", "vqa", "The answer is (B).", "--options", "left", "right"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "parsed": "B", "method": "cue_letter"}
    assert main(["vlm-parse", "--task", "grounding", "--size", "200", "100", "--convention", "norm1",
                 "[0.1, 0.1, 0.3, 0.5]"]) == 0
    assert json.loads(capsys.readouterr().out)["parsed"] == "[20, 10, 59, 49]"
    assert main(["vlm-parse", "--task", "vqa", "no idea", "--options", "left", "right"]) == 1
    assert main(["vlm-parse", "--task", "grounding", "--convention", "xywh", "[1, 2, 3, 4]"]) == 2
