"""Tiny LLaVA and Gemma 3 models with an offline byte-level BPE tokenizer, for the embedded default.

Both are the real architectures (``LlavaForConditionalGeneration``: CLIP vision tower + Llama text model;
``Gemma3ForConditionalGeneration``: SigLIP vision tower + Gemma 3 text model) at a few hundred thousand
parameters, with a processor and a chat template shaped like the real checkpoints'. They are saved with
``save_pretrained`` and loaded back through exactly the code path of the real models
(:func:`medfm_robust.vlm.models.load_local_vlm`), so the demo exercises the production code.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medfm_robust.errors import ConfigError

# Default family of the two tiny models of the embedded default (a config entry may name another).
TINY_FAMILIES = {"tiny_llava": "llava", "tiny_gemma3": "gemma3"}

SPECIAL_TOKENS = {
    "unk": "<unk>",
    "pad": "<pad>",
    "bos": "<bos>",
    "eos": "<eos>",
    "image": "<image>",
    "boi": "<start_of_image>",
    "eoi": "<end_of_image>",
    "sot": "<start_of_turn>",
    "eot": "<end_of_turn>",
}

# Chat templates mirroring the real checkpoints' conventions (rendered text, not token ids).
# LLaVA-Med v1.5 (Mistral instruct): "[INST] <image>\n{prompt} [/INST] {answer}</s>", no system prompt.
LLAVA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} [/INST]"
    "{% elif message['role'] == 'assistant' %} "
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

# Gemma 3 (MedGemma): system text is folded into the first user turn; images render as <start_of_image>.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}"
    "{% set ns.system = ns.system + item['text'] + '\n\n' %}{% endif %}{% endfor %}"
    "{% else %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else 'user' }}\n"
    "{% if message['role'] == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}<end_of_turn>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Any:
    """Train a byte-level BPE tokenizer on ``texts`` offline and wrap it as a ``PreTrainedTokenizerFast``.

    Byte-level means any string (unseen words, digits, punctuation) is encodable; the special tokens of
    :data:`SPECIAL_TOKENS` are added as atomic tokens, and ``image_token`` / ``boi_token`` / ``eoi_token``
    attributes exist as the Gemma 3 processor expects. Padding is on the left (for batched generation).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        unk_token=SPECIAL_TOKENS["unk"],
        padding_side="left",
        extra_special_tokens={
            "image_token": SPECIAL_TOKENS["image"],
            "boi_token": SPECIAL_TOKENS["boi"],
            "eoi_token": SPECIAL_TOKENS["eoi"],
            "sot_token": SPECIAL_TOKENS["sot"],
            "eot_token": SPECIAL_TOKENS["eot"],
        },
    )


def _check_geometry(image_size: int, patch_size: int) -> None:
    if image_size % patch_size:
        raise ConfigError(
            f"vlm tiny model: image_size {image_size} is not a multiple of patch_size {patch_size}"
        )


def build_tiny_llava(tokenizer: Any, arch: dict[str, Any]) -> tuple[Any, Any]:
    """A tiny ``LlavaForConditionalGeneration`` (CLIP vision + Llama text) and its ``LlavaProcessor``.

    ``arch`` keys: ``image_size``, ``patch_size``, ``hidden_size``, ``intermediate_size``,
    ``num_layers``, ``num_heads``, ``vision_hidden_size``, ``vision_layers``. The processor resizes any
    ``H x W x 3`` uint8 image to ``image_size``² and emits ``(image_size / patch_size)²`` image tokens: it
    counts the CLS token (``num_additional_image_tokens=1``) and, like the model's ``default`` feature
    strategy, drops it again, so the prompt holds one token per patch feature of the last CLIP layer.
    Those features are CLIP's raw residual stream (no final LayerNorm before the projector, unlike the
    normalised SigLIP features of Gemma 3), so training the tower from scratch needs a lower learning rate
    for it (``vlm.tiny_training.vision_lr_scale``, see :func:`medfm_robust.vlm.train.param_groups`).
    """
    from transformers import LlavaForConditionalGeneration

    size, patch = int(arch["image_size"]), int(arch["patch_size"])
    _check_geometry(size, patch)
    model = LlavaForConditionalGeneration(_llava_config(tokenizer, arch, size, patch))
    _set_generation_ids(model, tokenizer)
    return model, _llava_processor(tokenizer, size, patch)


def _llava_config(tokenizer: Any, arch: dict[str, Any], size: int, patch: int) -> Any:
    """The tiny LLaVA's ``LlavaConfig`` (see :func:`build_tiny_llava`)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=arch["vision_hidden_size"],
        intermediate_size=2 * arch["vision_hidden_size"],
        num_hidden_layers=arch["vision_layers"],
        num_attention_heads=arch["num_heads"],
        image_size=size,
        patch_size=patch,
        projection_dim=arch["vision_hidden_size"],
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch["hidden_size"],
        intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_layers"],
        num_attention_heads=arch["num_heads"],
        num_key_value_heads=arch["num_heads"],
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["image"]),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )


def _llava_processor(tokenizer: Any, size: int, patch: int) -> Any:
    """The tiny LLaVA's ``LlavaProcessor`` (PIL backend, as the evaluation loads it: models.py)."""
    from transformers import LlavaProcessor
    from transformers.models.clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        do_center_crop=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        image_token=SPECIAL_TOKENS["image"],
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def _gemma3_config(tokenizer: Any, arch: dict[str, Any], size: int, patch: int, n_tokens: int) -> Any:
    """The tiny Gemma 3's ``Gemma3Config`` (see :func:`build_tiny_gemma3`); checks ``n_tokens``."""
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    grid, side = size // patch, round(n_tokens**0.5)
    if side * side != n_tokens or grid % side:
        raise ConfigError(
            f"vlm tiny model: mm_tokens_per_image {n_tokens} must be a square whose side divides the "
            f"{grid} x {grid} patch grid"
        )
    head_dim = arch["hidden_size"] // arch["num_heads"]
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch["hidden_size"],
        intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_layers"],
        num_attention_heads=arch["num_heads"],
        num_key_value_heads=1,
        head_dim=head_dim,
        sliding_window=64,
        query_pre_attn_scalar=head_dim,  # 1/sqrt(head_dim) attention scaling at this tiny size
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = SiglipVisionConfig(
        hidden_size=arch["vision_hidden_size"],
        intermediate_size=2 * arch["vision_hidden_size"],
        num_hidden_layers=arch["vision_layers"],
        num_attention_heads=arch["num_heads"],
        image_size=size,
        patch_size=patch,
    )
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=n_tokens,
        boi_token_index=tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["boi"]),
        eoi_token_index=tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["eoi"]),
        image_token_index=tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["image"]),
    )


def build_tiny_gemma3(tokenizer: Any, arch: dict[str, Any]) -> tuple[Any, Any]:
    """A tiny ``Gemma3ForConditionalGeneration`` (SigLIP vision + Gemma 3 text) and its ``Gemma3Processor``.

    Same ``arch`` keys as :func:`build_tiny_llava` plus ``mm_tokens_per_image`` (a square number that
    divides the patch grid, e.g. 16 for an 8 x 8 grid): the number of pooled image tokens in the prompt.
    """
    import torch
    from transformers import Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3 import Gemma3ImageProcessorPil

    size, patch = int(arch["image_size"]), int(arch["patch_size"])
    _check_geometry(size, patch)
    n_tokens = int(arch["mm_tokens_per_image"])
    cfg = _gemma3_config(tokenizer, arch, size, patch, n_tokens)
    model = Gemma3ForConditionalGeneration(cfg)
    # transformers initialises the image-to-text projection to zeros (real checkpoints overwrite it); a
    # freshly built tiny model would start blind, so draw it like every other weight.
    with torch.no_grad():
        projection = model.model.multi_modal_projector.mm_input_projection_weight
        projection.normal_(0.0, cfg.text_config.initializer_range)
    _set_generation_ids(model, tokenizer)
    # as in the real Gemma 3 checkpoints, a model turn ends generation at <end_of_turn> as well as at <eos>
    model.generation_config.eos_token_id = [tokenizer.eos_token_id,
                                            tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["eot"])]
    image_processor = Gemma3ImageProcessorPil(size={"height": size, "width": size}, do_pan_and_scan=False)
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=n_tokens,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )
    return model, processor


def _set_generation_ids(model: Any, tokenizer: Any) -> None:
    gen = model.generation_config
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.do_sample = False


def build_tiny(family: str, texts: Iterable[str], arch: dict[str, Any], vocab_size: int) -> tuple[Any, Any]:
    """Tokenizer (trained on ``texts``) + untrained tiny model + processor of ``family`` (llava / gemma3)."""
    if family not in TINY_FAMILIES.values():
        raise ConfigError(f"tiny model family {family!r} not in {sorted(set(TINY_FAMILIES.values()))}")
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    builder = build_tiny_llava if family == "llava" else build_tiny_gemma3
    return builder(tokenizer, arch)


def save_tiny(model: Any, processor: Any, out_dir: str | Path) -> None:
    """``save_pretrained`` model and processor into ``out_dir`` (the caller makes it atomic)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
