"""Convert the official LLaVA-Med v1.5 release (LLaVA code base layout) to a ``transformers`` LLaVA folder.

The release (``microsoft/llava-med-v1.5-mistral-7b``) holds ``config.json`` (``model_type: llava_mistral``,
``LlavaMistralForCausalLM``), weight shards (``*.safetensors`` or ``pytorch_model-*.bin``) and a SentencePiece
``tokenizer.model``; no ``tokenizer.json``, processor or chat template. Its state dict (LLaVA-Med repository,
``llava/model/llava_arch.py``, ``language_model/llava_mistral.py``) is

- ``model.embed_tokens``, ``model.layers.N.*``, ``model.norm``, ``lm_head``: a Mistral causal LM;
- ``model.mm_projector.{0,2}.{weight,bias}``: ``mlp2x_gelu`` = Linear, GELU, Linear;
- ``model.vision_tower.vision_tower.vision_model.*``: a copy of the CLIP vision tower (``CLIPVisionModel``).
  The original code ignores this copy: it builds the tower, its config and its image processor from the folder
  named by ``mm_vision_tower`` (``openai/clip-vit-large-patch14-336``). When that folder is given (or found),
  its weights replace the copy (the difference is recorded); otherwise the copy is used (identical when the
  tower was frozen in training).

The output is ``LlavaForConditionalGeneration`` (``model.language_model.*``, ``model.multi_modal_projector.
linear_{1,2}``, ``model.vision_tower.*``, ``lm_head``) with ``vision_feature_layer = mm_vision_select_layer``
(-2) and strategy ``default`` (CLS dropped, = ``mm_vision_select_feature: patch``), one added ``<image>``
token (id = old vocabulary size; zero embedding and output rows, suppressed in generation), the
``mistral_instruct`` chat template, the CLIP image processor of ``mm_vision_tower`` and :data:`MARKER`
recording the LLaVA-Med preprocessing (:mod:`medfm_robust.vlm.llava_med`). Every source key is mapped; a key
left over or a target weight not filled stops the conversion with the key's name.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medfm_robust.errors import CheckpointError
from medfm_robust.vlm.llava_med import IMAGE_PLACEHOLDER, MARKER, MISTRAL_INSTRUCT_TEMPLATE, num_image_tokens

log = logging.getLogger(__name__)

# The CLIP tower LLaVA-Med v1.5 names (``mm_vision_tower``), from its released config.json and
# preprocessor_config.json; used when no local copy of that folder is given.
KNOWN_TOWERS: dict[str, dict[str, Any]] = {
    "openai/clip-vit-large-patch14-336": {
        "config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                   "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768,
                   "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
        "preprocessor": {"crop_size": 336, "size": {"shortest_edge": 336}, "do_center_crop": True,
                         "do_normalize": True, "do_resize": True, "do_rescale": True,
                         "rescale_factor": 1 / 255, "resample": 3, "do_convert_rgb": True,
                         "image_mean": [0.48145466, 0.4578275, 0.40821073],
                         "image_std": [0.26862954, 0.26130258, 0.27577711]},
    },
}
TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
# (official pattern, transformers replacement); applied in order, the first match wins
KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^model\.vision_tower\.vision_tower\.vision_model\.(.+)$", r"model.vision_tower.\1"),
    (r"^model\.mm_projector\.0\.(weight|bias)$", r"model.multi_modal_projector.linear_1.\1"),
    (r"^model\.mm_projector\.2\.(weight|bias)$", r"model.multi_modal_projector.linear_2.\1"),
    (r"^model\.(embed_tokens\..+|layers\.\d+\..+|norm\..+)$", r"model.language_model.\1"),
    (r"^(lm_head\.weight)$", r"\1"),
)
# buffers older transformers versions saved; recomputed by the model, dropped after a check
DERIVED_BUFFERS = (r"\.embeddings\.position_ids$", r"\.rotary_emb\.inv_freq$")
TEXT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
               "sliding_window", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings",
               "attention_dropout", "head_dim", "initializer_range")


def map_key(name: str) -> str | None:
    """The ``transformers`` LLaVA name of official key ``name``; ``None`` when no rule knows it."""
    for pattern, repl in KEY_RULES:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def read_config(src: Path) -> dict[str, Any]:
    """The official ``config.json``, checked to be a LLaVA-Mistral model this converter handles."""
    path = src / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{src}: no config.json (not a LLaVA-Med release folder)")
    cfg = json.loads(path.read_text())
    if cfg.get("model_type") != "llava_mistral":
        raise CheckpointError(f"{path}: field 'model_type' is {cfg.get('model_type')!r}; "
                              "expected 'llava_mistral'")
    if cfg.get("mm_projector_type") != "mlp2x_gelu":
        raise CheckpointError(f"{path}: field 'mm_projector_type' is {cfg.get('mm_projector_type')!r}; "
                              "only 'mlp2x_gelu' is supported")
    if cfg.get("mm_vision_select_feature", "patch") not in ("patch", "cls_patch"):
        raise CheckpointError(f"{path}: field 'mm_vision_select_feature' is "
                              f"{cfg['mm_vision_select_feature']!r}; expected 'patch' or 'cls_patch'")
    if cfg.get("mm_use_im_start_end"):
        raise CheckpointError(f"{path}: field 'mm_use_im_start_end' is true; image start/end tokens are not "
                              "supported")
    if not isinstance(cfg.get("mm_vision_select_layer"), int):
        raise CheckpointError(f"{path}: field 'mm_vision_select_layer' missing or not an integer")
    if not cfg.get("mm_vision_tower"):
        raise CheckpointError(f"{path}: field 'mm_vision_tower' missing")
    return cfg


def load_state_dict(src: Path) -> dict[str, Any]:
    """All tensors of the release's shards (``*.safetensors``, else ``pytorch_model*.bin`` loaded with
    ``weights_only=True``); a key present in two shards is an error."""
    import torch
    from safetensors.torch import load_file

    shards = sorted(src.glob("*.safetensors"))
    loader = load_file
    if not shards:
        shards = sorted(src.glob("pytorch_model*.bin"))
        def loader(p: Path) -> dict[str, Any]:
            return torch.load(p, map_location="cpu", weights_only=True)
    if not shards:
        raise CheckpointError(f"{src}: no weight shards (*.safetensors or pytorch_model*.bin)")
    state: dict[str, Any] = {}
    for shard in shards:
        for key, value in loader(shard).items():
            if key in state:
                raise CheckpointError(f"{shard}: key {key!r} also in another shard")
            state[key] = value
    return state


def tower_files(cfg: dict[str, Any], src: Path, vision_tower: str | Path | None) -> tuple[dict, dict, str]:
    """(CLIP vision config fields, CLIP preprocessor config, where they came from) for ``mm_vision_tower``.

    Order: the ``vision_tower`` folder given, then ``mm_vision_tower`` when it is an existing local folder
    (absolute or relative to ``src``), then :data:`KNOWN_TOWERS`; the original code reads both files from
    ``mm_vision_tower`` too.
    """
    name = str(cfg["mm_vision_tower"])
    candidates = [Path(vision_tower)] if vision_tower else [Path(name), src / name]
    for folder in candidates:
        if (folder / "config.json").is_file():
            conf = json.loads((folder / "config.json").read_text())
            conf = conf.get("vision_config", conf)  # a full CLIP folder nests the vision part
            pre_path = folder / "preprocessor_config.json"
            if not pre_path.is_file():
                raise CheckpointError(f"{folder}: no preprocessor_config.json for the CLIP tower")
            return conf, json.loads(pre_path.read_text()), str(folder)
    if vision_tower:
        raise CheckpointError(f"{vision_tower}: no config.json (vision tower folder)")
    if name in KNOWN_TOWERS:
        return dict(KNOWN_TOWERS[name]["config"]), dict(KNOWN_TOWERS[name]["preprocessor"]), name
    raise CheckpointError(f"{src / 'config.json'}: field 'mm_vision_tower' is {name!r}, neither a local "
                          "folder nor a known tower; pass its folder with --vision-tower")


def tower_weights(state: dict[str, Any], origin: str) -> dict[str, Any]:
    """Replace the shards' copy of the CLIP tower by the weights in the ``mm_vision_tower`` folder when it
    holds any (the original builds the tower from that folder and ignores the copy); returns a record of the
    replacement (where the weights came from, max absolute difference to the shards' copy)."""
    folder = Path(origin)
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
    if not folder.is_dir() or not has_weights:
        return {"tower_weights": "shards"}
    theirs = {k[len("vision_model."):]: v for k, v in load_state_dict(folder).items()
              if k.startswith("vision_model.") and not any(re.search(p, k) for p in DERIVED_BUFFERS)}
    ours = {k[len(TOWER_PREFIX):] for k in state
            if k.startswith(TOWER_PREFIX) and not any(re.search(p, k) for p in DERIVED_BUFFERS)}
    if set(theirs) != ours:
        raise CheckpointError(f"{folder}: its vision_model weights do not match the tower keys in the shards "
                              f"({sorted(set(theirs) ^ ours)[:3]})")
    diff = 0.0
    for key, value in theirs.items():
        mine = state[TOWER_PREFIX + key]
        if tuple(value.shape) != tuple(mine.shape):
            raise CheckpointError(f"{folder}: vision_model.{key} has shape {tuple(value.shape)}, the shards' "
                                  f"copy {tuple(mine.shape)}")
        diff = max(diff, float((value.float() - mine.float()).abs().max()))
        state[TOWER_PREFIX + key] = value.to(mine.dtype)
    if diff > 0:
        log.warning("CLIP tower in %s differs from the shards' copy (max |diff| %.3g); using the folder's, "
                    "as the original code does", folder, diff)
    return {"tower_weights": str(folder), "tower_max_abs_diff_to_shards": diff}


def vision_config(conf: dict[str, Any], state: dict[str, Any], origin: str) -> Any:
    """``CLIPVisionConfig`` from the tower's config, checked against the shapes of its weights."""
    from transformers import CLIPVisionConfig

    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
              "patch_size", "projection_dim", "hidden_act", "layer_norm_eps", "num_channels")
    vc = CLIPVisionConfig(**{k: conf[k] for k in fields if k in conf})
    patch = state.get(TOWER_PREFIX + "embeddings.patch_embedding.weight")
    pos = state.get(TOWER_PREFIX + "embeddings.position_embedding.weight")
    if patch is None or pos is None:
        raise CheckpointError("vision tower weights missing in the shards "
                              f"({TOWER_PREFIX}embeddings.patch_embedding/position_embedding)")
    layer_key = re.compile(re.escape(TOWER_PREFIX) + r"encoder\.layers\.(\d+)\.")
    layers = {int(m.group(1)) for k in state if (m := layer_key.match(k))}
    fc1 = state.get(TOWER_PREFIX + "encoder.layers.0.mlp.fc1.weight")
    found = {"hidden_size": patch.shape[0], "patch_size": patch.shape[-1], "num_hidden_layers": len(layers),
             "intermediate_size": None if fc1 is None else fc1.shape[0],
             "image_size": round((pos.shape[0] - 1) ** 0.5) * patch.shape[-1]}
    for key, value in found.items():
        if value != getattr(vc, key):
            raise CheckpointError(f"{origin}: vision config field {key!r} is {getattr(vc, key)} but the "
                                  f"tower weights in the shards say {value}")
    return vc


def text_config(cfg: dict[str, Any]) -> Any:
    """``MistralConfig`` from the official config's language-model fields."""
    from transformers import MistralConfig

    return MistralConfig(**{k: cfg[k] for k in TEXT_FIELDS
                            if k in cfg and (cfg[k] is not None or k == "sliding_window")})


def check_derived(key: str, value: Any, cfg: dict[str, Any]) -> None:
    """A saved ``position_ids`` / ``inv_freq`` buffer equals what the model recomputes (else: error)."""
    import torch

    if key.endswith("position_ids"):
        expected = torch.arange(value.shape[-1]).expand_as(value)
    else:
        dim = value.shape[0] * 2
        base = float(cfg.get("rope_theta", 10000.0))
        expected = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if not torch.allclose(value.float(), expected.float(), rtol=1e-5, atol=0):
        raise CheckpointError(f"buffer {key!r} differs from the recomputed one; unknown variant of the model")


def map_state_dict(state: dict[str, Any], cfg: dict[str, Any], target_keys: set[str]) -> dict[str, Any]:
    """``state`` renamed to the ``transformers`` layout; every key must be mapped and every target filled."""
    out: dict[str, Any] = {}
    unknown = []
    for key, value in state.items():
        if any(re.search(p, key) for p in DERIVED_BUFFERS):
            check_derived(key, value, cfg)
            continue
        new = map_key(key)
        if new is None or new not in target_keys:
            unknown.append(key)
            continue
        out[new] = value
    if unknown:
        raise CheckpointError(f"{len(unknown)} official key(s) not mapped (left over): {sorted(unknown)[:5]}")
    missing = sorted(target_keys - out.keys())
    if missing:
        raise CheckpointError(f"{len(missing)} weight(s) of the converted model not in the release: "
                              f"{missing[:5]}")
    return out


def add_image_row(out: dict[str, Any]) -> None:
    """One zero row for ``<image>`` in the input embeddings and the output head (its logit is suppressed)."""
    import torch

    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        w = out[key]
        out[key] = torch.cat([w, torch.zeros(1, w.shape[1], dtype=w.dtype)], dim=0)


def build_tokenizer(src: Path, vocab_size: int) -> Any:
    """The release's SentencePiece tokenizer as a ``transformers`` Llama tokenizer (BOS added, no EOS, as
    the original's ``LlamaTokenizer``) with ``<image>`` appended as id ``vocab_size``."""
    from transformers import LlamaTokenizer

    if not (src / "tokenizer.model").is_file():
        raise CheckpointError(f"{src}: no tokenizer.model (the release's SentencePiece tokenizer)")
    tok = LlamaTokenizer.from_pretrained(src, add_bos_token=True, add_eos_token=False)
    if len(tok) != vocab_size:
        raise CheckpointError(f"{src}: tokenizer has {len(tok)} tokens but config field 'vocab_size' is "
                              f"{vocab_size}")
    tok.add_tokens([IMAGE_PLACEHOLDER], special_tokens=True)
    if tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER) != vocab_size:
        raise CheckpointError(f"{src}: could not append {IMAGE_PLACEHOLDER} as token {vocab_size}")
    tok.chat_template = MISTRAL_INSTRUCT_TEMPLATE
    return tok


def llava_config(cfg: Mapping[str, Any], vc: Any, tc: Any, vocab: int) -> Any:
    """The ``transformers`` ``LlavaConfig`` of an official config ``cfg`` with vision config ``vc`` and text
    config ``tc`` (whose vocabulary grows by the appended image token, id ``vocab``)."""
    from transformers import LlavaConfig

    strategy = "default" if cfg.get("mm_vision_select_feature", "patch") == "patch" else "full"
    tc.vocab_size = vocab + 1
    return LlavaConfig(vision_config=vc, text_config=tc, image_token_index=vocab,
                       vision_feature_layer=int(cfg["mm_vision_select_layer"]),
                       vision_feature_select_strategy=strategy,
                       image_seq_length=num_image_tokens(vc.image_size, vc.patch_size),
                       projector_hidden_act="gelu", multimodal_projector_bias=True,
                       tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)))


def save_processor(dst: Path, pre_conf: Mapping[str, Any], tokenizer: Any, config: Any) -> None:
    """Write the LLaVA processor (CLIP image processor from ``pre_conf`` + ``tokenizer``) to ``dst``."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(**{k: v for k, v in pre_conf.items()
                                               if k not in ("image_processor_type", "feature_extractor_type",
                                                            "processor_class")})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=config.vision_config.patch_size,
                               vision_feature_select_strategy=config.vision_feature_select_strategy,
                               chat_template=MISTRAL_INSTRUCT_TEMPLATE, image_token=IMAGE_PLACEHOLDER,
                               num_additional_image_tokens=1)
    processor.save_pretrained(dst)


def convert_llava_med(src: str | Path, dst: str | Path, *, vision_tower: str | Path | None = None,
                      max_shard_size: str = "5GB") -> dict[str, Any]:
    """Convert the official folder ``src`` into a ``transformers`` LLaVA folder ``dst`` (created; must not
    exist). Returns the conversion record also written to ``dst/``:data:`MARKER`."""
    import torch
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise CheckpointError(f"{dst}: already exists; choose a new output folder")
    cfg = read_config(src)
    state = load_state_dict(src)
    v_conf, pre_conf, origin = tower_files(cfg, src, vision_tower)
    vc = vision_config(v_conf, state, origin)
    tower_record = tower_weights(state, origin)
    tc = text_config(cfg)
    vocab = int(cfg["vocab_size"])
    tokenizer = build_tokenizer(src, vocab)
    config = llava_config(cfg, vc, tc, vocab)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    targets = set(model.state_dict())
    embed = state.get("model.embed_tokens.weight")
    if embed is None or embed.shape[0] != vocab:
        raise CheckpointError(f"{src}: model.embed_tokens.weight missing or not {vocab} rows "
                              "(config field 'vocab_size')")
    mapped = map_state_dict(state, cfg, targets)
    add_image_row(mapped)
    dtype = mapped["lm_head.weight"].dtype
    mapped = {k: v.to(dtype) for k, v in mapped.items()}
    model.load_state_dict(mapped, strict=True, assign=True)
    model.generation_config = GenerationConfig(bos_token_id=tc.bos_token_id, eos_token_id=tc.eos_token_id,
                                               suppress_tokens=[vocab])
    dst.mkdir(parents=True)
    model.save_pretrained(dst, max_shard_size=max_shard_size)
    save_processor(dst, pre_conf, tokenizer, config)
    record = {"source": str(src), "vision_tower": origin, "image_aspect_ratio": cfg.get("image_aspect_ratio"),
              "conv_template": "mistral_instruct", "image_token_id": vocab,
              "num_image_tokens": num_image_tokens(vc.image_size, vc.patch_size),
              "source_keys": len(state), "dtype": str(dtype).replace("torch.", ""), **tower_record}
    (dst / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    log.info("converted %s -> %s (%d keys)", src, dst, len(state))
    return record
