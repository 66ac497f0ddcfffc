"""LLaVA-Med v1.5 from its official release: ``vlm-convert llava-med`` on a tiny random model written by this
test in the official layout (LLaVA-Med repository: ``LlavaMistralForCausalLM`` keys, ``config.json`` fields,
a SentencePiece ``tokenizer.model`` only), checked against an independent re-implementation of the original
forward pass (CLIP hidden state ``mm_vision_select_layer`` without CLS -> ``mlp2x_gelu`` -> spliced at the
index -200 into the Mistral embeddings) and of the original input building (``tokenizer_image_token`` on
SentencePiece ids, ``expand2square`` with the CLIP mean colour)."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
spm = pytest.importorskip("sentencepiece")
F = torch.nn.functional

from medfm_robust.errors import CheckpointError  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 320
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0}
VISION = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
          "image_size": 16, "patch_size": 4, "projection_dim": 8, "hidden_act": "quick_gelu",
          "layer_norm_eps": 1e-5, "model_type": "clip_vision_model"}
# the CLIP ViT-L/14-336 processor's fields (mean/std, bicubic, shortest edge + centre crop), tiny size
PREPROCESSOR = {"crop_size": 16, "size": {"shortest_edge": 16}, "do_center_crop": True, "do_normalize": True,
                "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "resample": 3,
                "do_convert_rgb": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "image_processor_type": "CLIPImageProcessor"}
T = "model.vision_tower.vision_tower.vision_model."
IMAGE_INDEX = -200
PROMPT = "What modality is shown in the image?"


def official_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights under the official LlavaMistralForCausalLM key names (float32)."""
    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    h, hv, kv = TEXT["hidden_size"], VISION["hidden_size"], TEXT["num_key_value_heads"]
    hd = h // TEXT["num_attention_heads"]
    n_patch = (VISION["image_size"] // VISION["patch_size"]) ** 2
    sd = {"model.embed_tokens.weight": r(VOCAB, h), "model.norm.weight": 1 + r(h),
          "lm_head.weight": r(VOCAB, h),
          "model.mm_projector.0.weight": r(h, hv), "model.mm_projector.0.bias": r(h),
          "model.mm_projector.2.weight": r(h, h), "model.mm_projector.2.bias": r(h)}
    for i in range(TEXT["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd |= {p + "self_attn.q_proj.weight": r(h, h), p + "self_attn.k_proj.weight": r(kv * hd, h),
               p + "self_attn.v_proj.weight": r(kv * hd, h), p + "self_attn.o_proj.weight": r(h, h),
               p + "mlp.gate_proj.weight": r(64, h), p + "mlp.up_proj.weight": r(64, h),
               p + "mlp.down_proj.weight": r(h, 64), p + "input_layernorm.weight": 1 + r(h),
               p + "post_attention_layernorm.weight": 1 + r(h)}
    sd |= {T + "embeddings.class_embedding": r(hv), T + "embeddings.patch_embedding.weight": r(hv, 3, 4, 4),
           T + "embeddings.position_embedding.weight": r(n_patch + 1, hv),
           T + "pre_layrnorm.weight": 1 + r(hv), T + "pre_layrnorm.bias": r(hv),
           T + "post_layernorm.weight": 1 + r(hv), T + "post_layernorm.bias": r(hv)}
    for i in range(VISION["num_hidden_layers"]):
        p = f"{T}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd |= {p + f"self_attn.{proj}.weight": r(hv, hv), p + f"self_attn.{proj}.bias": r(hv)}
        sd |= {p + "mlp.fc1.weight": r(32, hv), p + "mlp.fc1.bias": r(32), p + "mlp.fc2.weight": r(hv, 32),
               p + "mlp.fc2.bias": r(hv), p + "layer_norm1.weight": 1 + r(hv), p + "layer_norm1.bias": r(hv),
               p + "layer_norm2.weight": 1 + r(hv), p + "layer_norm2.bias": r(hv)}
    return sd


def train_spm(path: Path) -> None:
    """A tiny Llama/Mistral-style SentencePiece BPE model (byte fallback, dummy prefix, identity
    normalisation, unk/bos/eos = 0/1/2)."""
    base = ["What modality is shown in the image?", "[INST] Describe the lesion. [/INST]",
            "A chest X-ray with an opacity in the left lung.", "The answer is B.", "CT MRI fundus dermoscopy"]
    texts = base * 10 + [" ".join(base) + f" {i}" for i in range(40)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=VOCAB, model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2)
    path.write_bytes(buf.getvalue())


def write_release(root: Path, sd: dict[str, torch.Tensor], fmt: str = "safetensors") -> Path:
    """The folder as the release is written: config.json, two weight shards, tokenizer.model; the CLIP tower
    folder (config + preprocessor config) beside it, named by ``mm_vision_tower``."""
    from safetensors.torch import save_file

    tower = root / "clip-tower"
    tower.mkdir(parents=True)
    (tower / "config.json").write_text(json.dumps(VISION))
    (tower / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    src = root / "llava-med-v1.5-mistral-7b"
    src.mkdir()
    config = {"architectures": ["LlavaMistralForCausalLM"], "model_type": "llava_mistral", **TEXT,
              "vocab_size": VOCAB, "hidden_act": "silu", "max_position_embeddings": 32768,
              "sliding_window": None,
              "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False, "torch_dtype": "float32",
              "mm_vision_tower": str(tower), "mm_hidden_size": VISION["hidden_size"],
              "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
              "mm_vision_select_feature": "patch",
              "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "mm_patch_merge_type": "flat",
              "image_aspect_ratio": "pad", "use_mm_proj": True, "tokenizer_model_max_length": 4096,
              "tokenizer_padding_side": "right", "tune_mm_mlp_adapter": False, "use_cache": False}
    (src / "config.json").write_text(json.dumps(config))
    keys = sorted(sd)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves, 1):
        if fmt == "safetensors":
            name = f"model-{i:05d}-of-00002.safetensors"
            save_file({k: sd[k].contiguous() for k in part}, src / name)
        else:
            name = f"pytorch_model-{i:05d}-of-00002.bin"
            torch.save({k: sd[k] for k in part}, src / name)
        weight_map |= dict.fromkeys(part, name)
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (src / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    train_spm(src / "tokenizer.model")
    return src


# ------------------------------------------------------------------ independent re-implementation


def ref_input_ids(sp, prompt: str) -> list[int]:
    """mistral_instruct + tokenizer_image_token: chunks around <image> tokenised with BOS, BOS kept once."""
    text = f"[INST] <image>\n{prompt} [/INST]"
    chunks = [[1, *sp.encode(c)] for c in text.split("<image>")]
    return chunks[0] + [IMAGE_INDEX] + chunks[1][1:]


def ref_pixels(image: np.ndarray) -> torch.Tensor:
    """expand2square with int(255 * mean) (offset (long - short) // 2), bicubic resize, crop, normalise."""
    from PIL import Image

    h, w = image.shape[:2]
    side = max(h, w)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = [int(255 * m) for m in PREPROCESSOR["image_mean"]]
    y0, x0 = (side - h) // 2, (side - w) // 2
    canvas[y0:y0 + h, x0:x0 + w] = image
    s = PREPROCESSOR["crop_size"]
    arr = np.asarray(Image.fromarray(canvas).resize((s, s), Image.BICUBIC), np.float32) / 255
    mean, std = (np.array(PREPROCESSOR[k], np.float32) for k in ("image_mean", "image_std"))
    arr = (arr - mean) / std
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]


def ref_logits(sd: dict[str, torch.Tensor], ids: list[int], pixels: torch.Tensor) -> torch.Tensor:
    """Next-token logits of LlavaMistralForCausalLM (float32): CLIP hidden_states[-2][:, 1:] ->
    Linear-GELU-Linear -> replaces the -200 position -> Mistral (RMSNorm, RoPE, GQA, SiLU MLP)."""
    hv, nhv, ps = VISION["hidden_size"], VISION["num_attention_heads"], VISION["patch_size"]
    x = F.conv2d(pixels, sd[T + "embeddings.patch_embedding.weight"], stride=ps).flatten(2).transpose(1, 2)
    x = torch.cat([sd[T + "embeddings.class_embedding"].expand(1, 1, hv), x], 1)
    x = x + sd[T + "embeddings.position_embedding.weight"][None]
    x = F.layer_norm(x, (hv,), sd[T + "pre_layrnorm.weight"], sd[T + "pre_layrnorm.bias"], 1e-5)
    states = [x]
    for i in range(VISION["num_hidden_layers"]):
        p = f"{T}encoder.layers.{i}."
        def lin(v, name, p=p):
            return v @ sd[p + name + ".weight"].T + sd[p + name + ".bias"]
        y = F.layer_norm(x, (hv,), sd[p + "layer_norm1.weight"], sd[p + "layer_norm1.bias"], 1e-5)
        q, k, v = (lin(y, f"self_attn.{n}_proj").view(1, -1, nhv, hv // nhv).transpose(1, 2) for n in "qkv")
        att = torch.softmax(q @ k.transpose(-1, -2) * (hv // nhv) ** -0.5, -1) @ v
        x = x + lin(att.transpose(1, 2).reshape(1, -1, hv), "self_attn.out_proj")
        y = F.layer_norm(x, (hv,), sd[p + "layer_norm2.weight"], sd[p + "layer_norm2.bias"], 1e-5)
        y = lin(y, "mlp.fc1")
        x = x + lin(y * torch.sigmoid(1.702 * y), "mlp.fc2")
        states.append(x)
    feats = states[-2][0, 1:]
    feats = F.gelu(feats @ sd["model.mm_projector.0.weight"].T + sd["model.mm_projector.0.bias"])
    feats = feats @ sd["model.mm_projector.2.weight"].T + sd["model.mm_projector.2.bias"]
    pos = ids.index(IMAGE_INDEX)
    emb = sd["model.embed_tokens.weight"]
    x = torch.cat([emb[ids[:pos]], feats, emb[ids[pos + 1:]]])[None]
    h, nh, kv = TEXT["hidden_size"], TEXT["num_attention_heads"], TEXT["num_key_value_heads"]
    hd, n = h // nh, x.shape[1]

    def rms(v, w):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + TEXT["rms_norm_eps"]) * w

    inv = 1.0 / TEXT["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = torch.cat([torch.outer(torch.arange(n, dtype=torch.float32), inv)] * 2, -1)
    cos, sin = ang.cos(), ang.sin()

    def rope(t):
        half = torch.cat([-t[..., hd // 2:], t[..., : hd // 2]], -1)
        return t * cos + half * sin

    causal = torch.full((n, n), float("-inf")).triu(1)
    for i in range(TEXT["num_hidden_layers"]):
        p = f"model.layers.{i}."
        y = rms(x, sd[p + "input_layernorm.weight"])
        q = rope((y @ sd[p + "self_attn.q_proj.weight"].T).view(1, n, nh, hd).transpose(1, 2))
        k = rope((y @ sd[p + "self_attn.k_proj.weight"].T).view(1, n, kv, hd).transpose(1, 2))
        v = (y @ sd[p + "self_attn.v_proj.weight"].T).view(1, n, kv, hd).transpose(1, 2)
        k, v = k.repeat_interleave(nh // kv, 1), v.repeat_interleave(nh // kv, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5 + causal, -1) @ v
        x = x + att.transpose(1, 2).reshape(1, n, h) @ sd[p + "self_attn.o_proj.weight"].T
        y = rms(x, sd[p + "post_attention_layernorm.weight"])
        mlp = F.silu(y @ sd[p + "mlp.gate_proj.weight"].T) * (y @ sd[p + "mlp.up_proj.weight"].T)
        x = x + mlp @ sd[p + "mlp.down_proj.weight"].T
    return (rms(x, sd["model.norm.weight"]) @ sd["lm_head.weight"].T)[0, -1]


# ------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("llava_med_release")
    sd = official_state(torch.Generator().manual_seed(0))
    return {"sd": sd, "src": write_release(root, sd), "root": root}


@pytest.fixture(scope="module")
def converted(release):
    from medfm_robust.cli import main

    dst = release["root"] / "converted"
    assert main(["vlm-convert", "llava-med", str(release["src"]), str(dst)]) == 0
    return dst


def test_converted_model_gives_the_original_next_token_logits(release, converted):
    from medfm_robust.vlm.models import load_vlm, to_pil_rgb

    vlm = load_vlm("llava_med", {"kind": "local", "dtype": "float32"}, model_dir=converted, device="cpu")
    assert type(vlm.model).__name__ == "LlavaForConditionalGeneration"
    text = vlm.render(PROMPT)
    assert text == f"[INST] <image>\n{PROMPT} [/INST]"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (10, 16, 3), dtype=np.uint8)  # wide: padded top and bottom
    enc = vlm.processor(text=[text], images=[[to_pil_rgb(image)]])
    sp = spm.SentencePieceProcessor(model_file=str(release["src"] / "tokenizer.model"))
    ref_ids = ref_input_ids(sp, PROMPT)
    n_img = (VISION["image_size"] // VISION["patch_size"]) ** 2
    pos = ref_ids.index(IMAGE_INDEX)
    expected = ref_ids[:pos] + [VOCAB] * n_img + ref_ids[pos + 1:]
    assert enc["input_ids"][0].tolist() == expected
    pixels = ref_pixels(image)
    assert float((enc["pixel_values"] - pixels).abs().max()) < 1e-5
    with torch.no_grad():
        ours = vlm.model(**enc).logits[0, -1]
    ref = ref_logits(release["sd"], ref_ids, pixels)
    diff = float((ours[:VOCAB] - ref).abs().max())
    print(f"max |logit difference| = {diff:.3g}")
    assert diff < 1e-4
    assert int(ours[:VOCAB].argmax()) == int(ref.argmax())
    assert vlm.model.generation_config.suppress_tokens == [VOCAB]  # <image> is never generated
    images, prompts = [image, image[:, :8]], [PROMPT, "Describe it."]  # different lengths: left padding
    out = vlm.generate(images, prompts, "caption", 4)
    assert len(out) == 2 and all(isinstance(o, str) and o for o in out), out
    spec = {"kind": "local", "dtype": "float32", "batch_size": 1}
    single = load_vlm("llava_med", spec, model_dir=converted, device="cpu")
    assert single.generate(images, prompts, "caption", 4) == out


def test_conversion_record_and_folder(converted):
    cfg = json.loads((converted / "config.json").read_text())
    assert cfg["vision_feature_layer"] == -2 and cfg["vision_feature_select_strategy"] == "default"
    assert cfg["image_token_index"] == VOCAB and cfg["text_config"]["vocab_size"] == VOCAB + 1
    assert cfg["text_config"]["model_type"] == "mistral"
    record = json.loads((converted / "llava_med.json").read_text())
    assert record["image_aspect_ratio"] == "pad" and record["conv_template"] == "mistral_instruct"
    assert record["num_image_tokens"] == 16


def test_bin_shards_convert_to_the_same_weights(release, tmp_path, converted):
    from safetensors.torch import load_file

    from medfm_robust.vlm.convert_llava import convert_llava_med

    src = write_release(tmp_path, release["sd"], fmt="bin")
    convert_llava_med(src, tmp_path / "out")
    a = {k: v for f in sorted((tmp_path / "out").glob("*.safetensors")) for k, v in load_file(f).items()}
    b = {k: v for f in sorted(converted.glob("*.safetensors")) for k, v in load_file(f).items()}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_any_key_left_over_or_missing_stops_the_conversion(release, tmp_path, change):
    from medfm_robust.vlm.convert_llava import convert_llava_med

    sd = dict(release["sd"])
    if change == "extra":
        sd["model.mm_projector.4.weight"] = torch.zeros(2, 2)
        match = r"not mapped.*model\.mm_projector\.4\.weight"
    else:
        del sd["model.layers.1.mlp.up_proj.weight"]
        match = r"not in the release.*model\.language_model\.layers\.1\.mlp\.up_proj\.weight"
    src = write_release(tmp_path, sd)
    with pytest.raises(CheckpointError, match=match):
        convert_llava_med(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_release_fields_name_the_file_and_field(release, tmp_path):
    from medfm_robust.cli import main
    from medfm_robust.vlm.convert_llava import convert_llava_med

    src = tmp_path / "src"
    shutil.copytree(release["src"], src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "mm_projector_type": "linear"}))
    with pytest.raises(CheckpointError, match=r"config\.json: field 'mm_projector_type'"):
        convert_llava_med(src, tmp_path / "out")
    (src / "config.json").write_text(json.dumps({**cfg, "mm_vision_tower": "someone/unknown-tower"}))
    assert main(["vlm-convert", "llava-med", str(src), str(tmp_path / "out")]) == 2
    # the released tower's facts (ViT-L/14-336) are checked against the weights: here they are tiny
    known = {**cfg, "mm_vision_tower": "openai/clip-vit-large-patch14-336"}
    (src / "config.json").write_text(json.dumps(known))
    with pytest.raises(CheckpointError, match=r"'hidden_size' is 1024 but the tower weights in the shards"):
        convert_llava_med(src, tmp_path / "out")


def test_tower_weights_come_from_the_mm_vision_tower_folder_when_it_holds_them(release, converted, tmp_path):
    """As the original, which builds the CLIP tower from ``mm_vision_tower`` and ignores the shards' copy."""
    from safetensors.torch import save_file
    from transformers import LlavaForConditionalGeneration

    from medfm_robust.vlm.convert_llava import convert_llava_med

    assert json.loads((converted / "llava_med.json").read_text())["tower_weights"] == "shards"
    tower = tmp_path / "clip-tower"
    shutil.copytree(release["root"] / "clip-tower", tower)
    gen = torch.Generator().manual_seed(5)
    sd = dict(release["sd"])
    theirs = {}
    for key in [k for k in sd if k.startswith(T)]:
        sd[key] = sd[key] + 0.05 * torch.randn(sd[key].shape, generator=gen)
        theirs["vision_model." + key[len(T):]] = sd[key]
    save_file(theirs, tower / "model.safetensors")
    record = convert_llava_med(release["src"], tmp_path / "out", vision_tower=tower)
    assert record["tower_weights"] == str(tower) and record["tower_max_abs_diff_to_shards"] > 0.05
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    sp = spm.SentencePieceProcessor(model_file=str(release["src"] / "tokenizer.model"))
    ids = ref_input_ids(sp, PROMPT)
    pos = ids.index(IMAGE_INDEX)
    expanded = ids[:pos] + [VOCAB] * 16 + ids[pos + 1:]
    pixels = ref_pixels(np.full((16, 16, 3), 90, np.uint8))
    with torch.no_grad():
        ours = model(input_ids=torch.tensor([expanded]), pixel_values=pixels).logits[0, -1, :VOCAB]
    assert float((ours - ref_logits(sd, ids, pixels)).abs().max()) < 1e-4


def test_mistral_instruct_is_used_when_the_folder_has_no_chat_template(converted, tmp_path):
    """LLaVA's conv_mistral_instruct (LLAMA_2 style, empty system): image first, a system text in <<SYS>>."""
    from medfm_robust.vlm.models import load_vlm

    copy = tmp_path / "no-template"
    shutil.copytree(converted, copy)
    (copy / "chat_template.jinja").unlink()
    spec = {"kind": "local", "dtype": "float32", "system_prompt": "Be brief.", "image_position": "after"}
    vlm = load_vlm("llava_med", spec, model_dir=copy, device="cpu")
    assert vlm.processor.processor.chat_template is None
    assert vlm.render(PROMPT) == f"[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<image>\n{PROMPT} [/INST]"
