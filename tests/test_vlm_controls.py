"""Image-blind controls: a blank mid-grey image and no image (tiny local models, condition tables)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medfm_robust.errors import ConfigError
from medfm_robust.io import decode_png, encode_png

torch = pytest.importorskip("torch")

SAMPLES = pd.DataFrame({
    "sample_id": ["s1", "s2", "s3"], "dataset": "demo", "modality": "ct", "split": "test",
    "question": ["Which side?"] * 3, "options": [["left", "right"]] * 3, "answer": ["A", "B", "A"],
    "reference": ["left", "right", "left"], "box": [[1, 2, 5, 6]] * 3,
    "height": [20, 20, 12], "width": [30, 30, 16],
    "image_png": [encode_png(np.full((20, 30), 7, np.uint8)), encode_png(np.zeros((20, 30, 3), np.uint8)),
                  encode_png(np.full((12, 16), 65535, np.uint16))],
})


def test_blank_and_no_image_conditions_keep_the_clean_questions() -> None:
    from medfm_robust.vlm.run import BLANK_GREY, control_conditions

    blank = control_conditions(SAMPLES, "blank_image")
    assert list(blank["sample_id"]) == ["s1", "s2", "s3"] and (blank["category"] == "control").all()
    assert (blank["level"] == 0).all() and blank["ssim"].isna().all()
    assert (blank["perturbation"] == "blank_image").all()
    for png, h, w in zip(blank["image_png"], blank["height"], blank["width"], strict=True):
        img = decode_png(png)
        assert img.shape == (h, w) and img.dtype == np.uint8 and (img == BLANK_GREY).all()
    none = control_conditions(SAMPLES, "no_image")
    assert none["image_png"].isna().all() and list(none["answer"]) == ["A", "B", "A"]
    with pytest.raises(ConfigError, match=r"vlm\.controls"):
        control_conditions(SAMPLES, "black_image")


class _NeedsImage:
    """A processor that refuses text-only input (as a model without a text-only path would)."""

    def __init__(self, processor) -> None:
        self._p = processor
        self.tokenizer = processor.tokenizer

    def apply_chat_template(self, *args, **kwargs):
        return self._p.apply_chat_template(*args, **kwargs)

    def __call__(self, *, text, images=None, **kwargs):
        if images is None:
            raise ValueError("this processor needs images")
        return self._p(text=text, images=images, **kwargs)


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_tiny_models_answer_without_an_image(family, tmp_path) -> None:
    """Both tiny families (HF Llava / Gemma 3, as the real checkpoints) take a text-only chat prompt; a
    processor that refuses it leaves the no_image control empty instead of failing the job."""
    from test_vlm_models import SPECS

    from medfm_robust.metrics.vlm import conditions_from
    from medfm_robust.vlm.models import LocalVLM, load_vlm
    from medfm_robust.vlm.run import accepts_no_image, control_conditions, evaluate_conditions, generate_all
    from medfm_robust.vlm.tiny import build_tiny, save_tiny

    name = f"tiny_{family}"
    spec = SPECS[name]
    torch.manual_seed(0)
    model, processor = build_tiny(family, ["Which side? A. left B. right", "left right"], spec["arch"], 320)
    save_tiny(model, processor, tmp_path / name)
    vlm = load_vlm(name, spec, model_dir=tmp_path / name, device="cpu")
    assert accepts_no_image(vlm)
    image_token = vlm.processor.image_token
    assert image_token in vlm.render("Which side?") and image_token not in vlm.render("Which side?", False)
    rows = SAMPLES.assign(image_png=[None, SAMPLES["image_png"][1], None]).to_dict("records")
    out = generate_all(vlm, rows, "vqa", "norm1000", 4)
    assert len(out) == 3 and all(isinstance(o, str) for o in out)
    # the same row answered alone gives the same text (no-image rows are batched on their own)
    assert generate_all(vlm, rows[:1], "vqa", "norm1000", 4) == out[:1]

    refusing = LocalVLM(name, vlm.model, _NeedsImage(vlm.processor), revision="r", batch_size=4)
    assert not accepts_no_image(refusing)
    frames = {"clean": conditions_from(SAMPLES), "no_image": control_conditions(SAMPLES, "no_image")}
    outputs = {k: tmp_path / f"{k}.parquet" for k in frames}
    tables = evaluate_conditions(refusing, frames, outputs, task="vqa", convention="norm1000",
                                 max_new_tokens=2)
    assert len(tables["clean"]) == 3 and len(tables["no_image"]) == 0
    assert len(pd.read_parquet(outputs["no_image"])) == 0


def test_summary_counts_unparsed_and_abstained_answers() -> None:
    from medfm_robust.metrics.vlm import conditions_from, summarise
    from medfm_robust.vlm.scoring import score_outputs

    raw = ["B", "I cannot determine this without the image.", "A or B"]
    table = score_outputs("vqa", conditions_from(SAMPLES), raw, model="m", model_revision="r")
    assert list(table["parse_ok"]) == [True, False, False]
    assert list(table["abstained"]) == [False, True, False]
    assert not table["correct"].any()  # "B" is wrong; the unparsed ones count as wrong
    row = summarise(table).iloc[0]
    assert (row["n"], row["parse_failures"], row["abstentions"]) == (3, 2, 1)
