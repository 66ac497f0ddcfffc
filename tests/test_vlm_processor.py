"""MedGemma / MedGemma-1.5 processor parity: a tiny random Gemma 3 folder carrying the released processor and
tokenizer configuration (facts copied from google/gemma-3-4b-it's files, which MedGemma 4B shares: 896 x 896,
mean = std = 0.5, bilinear, pan-and-scan null, 256 image tokens, <start_of_image> / <image_soft_token> /
<end_of_image>, the released chat template) is loaded by the production loader, and what reaches the model's
forward (pixel values, token ids) is compared with an independent computation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medfm_robust.errors import CheckpointError  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# preprocessor_config.json of the release, field for field
PREPROCESSOR = {
    "do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Gemma3ImageProcessor", "image_seq_length": 256,
    "image_std": [0.5, 0.5, 0.5], "pan_and_scan_max_num_crops": None, "pan_and_scan_min_crop_size": None,
    "pan_and_scan_min_ratio_to_activate": None, "processor_class": "Gemma3Processor", "resample": 2,
    "rescale_factor": 0.00392156862745098, "size": {"height": 896, "width": 896},
}
PROCESSOR = {"image_seq_length": 256, "processor_class": "Gemma3Processor"}
# the released Gemma 3 chat template (chat_template.json)
CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)
# Gemma's special tokens in their released order (pad 0, eos 1, bos 2, unk 3) plus the turn and image tokens
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
           "<end_of_image>", "<image_soft_token>"]
SYSTEM = "You are an expert medical imaging specialist."
PROMPT = "What modality is shown? Answer with the letter."
SPEC = {"kind": "local", "dtype": "float32", "system_prompt": SYSTEM, "image_position": "after"}


def write_gemma3_folder(folder: Path) -> None:
    """Random tiny Gemma 3 weights (SigLIP at the released 896 px / patch 14, 256 pooled image tokens) and the
    released processor, tokenizer and chat-template files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        PreTrainedTokenizerFast,
        SiglipVisionConfig,
    )

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator([SYSTEM, PROMPT, "A CT image of the liver."], trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"})
    tok.save_pretrained(folder)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    assert [ids[t] for t in SPECIAL[:4]] == [0, 1, 2, 3]
    text = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=64,
                            max_position_embeddings=512, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, image_size=896, patch_size=14)
    cfg = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=256,
                       boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                       image_token_index=ids["<image_soft_token>"])
    Gemma3ForConditionalGeneration(cfg).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    (folder / "processor_config.json").write_text(json.dumps(PROCESSOR, indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("medgemma") / "medgemma-4b-it"
    out.mkdir()
    write_gemma3_folder(out)
    return out


def expected_pixels(image: np.ndarray) -> np.ndarray:
    """896 x 896 bilinear resize of the 8-bit image (PIL), then (x / 255 - 0.5) / 0.5, channels first."""
    from PIL import Image

    arr = np.asarray(Image.fromarray(image).resize((896, 896), Image.BILINEAR), np.float64)
    return ((arr / 255 - 0.5) / 0.5).transpose(2, 0, 1)


@pytest.mark.parametrize("name", ["medgemma", "medgemma_1_5"])
def test_what_reaches_medgemma_is_set_by_its_folder(folder, name):
    from medfm_robust.vlm.models import load_vlm

    vlm = load_vlm(name, SPEC, model_dir=folder, device="cpu")
    s = vlm.processor_settings
    assert s["image_size"] == [896, 896] and s["image_mean"] == s["image_std"] == [0.5] * 3
    assert s["do_pan_and_scan"] is False and s["image_seq_length"] == 256 and s["resample"] == 2
    # the released template: system text folded into the user turn, text then image (the original's order)
    assert vlm.render(PROMPT) == (f"<bos><start_of_turn>user\n{SYSTEM}\n\n{PROMPT}<start_of_image>"
                                  "<end_of_turn>\n<start_of_turn>model\n")
    seen: dict[str, torch.Tensor] = {}

    def grab_ids(module, args, kwargs):
        seen.setdefault("input_ids", kwargs["input_ids"].clone())

    def grab_pixels(module, args, kwargs):
        seen.setdefault("pixel_values", (args[0] if args else kwargs["pixel_values"]).clone())

    hooks = [vlm.model.register_forward_pre_hook(grab_ids, with_kwargs=True),
             vlm.model.model.vision_tower.register_forward_pre_hook(grab_pixels, with_kwargs=True)]
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)  # not square: resized, not cropped or padded
    try:
        vlm.generate([image], [PROMPT], "vqa", 1)
    finally:
        for h in hooks:
            h.remove()
    pix = seen["pixel_values"]
    assert tuple(pix.shape) == (1, 3, 896, 896)  # one crop: pan-and-scan off
    assert float(np.abs(pix[0].numpy() - expected_pixels(image)).max()) < 1e-6
    ids = seen["input_ids"][0].tolist()
    tok = vlm.tokenizer
    boi, eoi, soft = (tok.convert_tokens_to_ids(t) for t in ("<start_of_image>", "<end_of_image>",
                                                             "<image_soft_token>"))
    where = [i for i, t in enumerate(ids) if t == soft]
    assert len(where) == 256 and where == list(range(where[0], where[0] + 256))
    assert ids[where[0] - 1] == boi and ids[where[-1] + 1] == eoi and ids.count(boi) == ids.count(eoi) == 1
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids[1:where[0] - 1]) == f"<start_of_turn>user\n{SYSTEM}\n\n{PROMPT}\n\n"
    assert tok.decode(ids[where[-1] + 2:]) == "\n\n<end_of_turn>\n<start_of_turn>model\n"
    assert vlm.model.config.mm_tokens_per_image == s["image_seq_length"]


def test_a_processor_that_disagrees_with_its_folder_stops_the_run(folder):
    from transformers import AutoProcessor

    from medfm_robust.vlm.processor_check import check_processor_parity

    processor = AutoProcessor.from_pretrained(folder, backend="pil")
    assert check_processor_parity(folder, processor)["do_pan_and_scan"] is False
    processor.image_processor.do_pan_and_scan = True
    with pytest.raises(CheckpointError, match=r"preprocessor_config\.json: field 'do_pan_and_scan'"):
        check_processor_parity(folder, processor)
    processor.image_processor.do_pan_and_scan = False
    processor.image_processor.size = {"height": 448, "width": 448}
    with pytest.raises(CheckpointError, match=r"field 'image_size' is \[896, 896\]"):
        check_processor_parity(folder, processor)


def test_a_folder_without_its_chat_template_is_refused(folder, tmp_path):
    import shutil

    from medfm_robust.vlm.models import load_vlm

    copy = tmp_path / "medgemma-no-template"
    shutil.copytree(folder, copy)
    (copy / "chat_template.json").unlink()
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((copy / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="no chat template"):
        load_vlm("medgemma", SPEC, model_dir=copy, device="cpu")
