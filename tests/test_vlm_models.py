"""VLM model half: tiny LLaVA / Gemma 3 builders, the one model interface, training to twice chance, the
grounding LoRA (peft format, vision attention only, resume = uninterrupted) and the missing-folder error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from medfm_robust.errors import CheckpointError, ConfigError  # noqa: E402
from medfm_robust.io import encode_png, write_parquet_atomic  # noqa: E402
from medfm_robust.seeding import rng_for, unit_hash  # noqa: E402
from medfm_robust.vlm.datasets import build_and_write, read_samples  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODALITY_LOOK = {"dermoscopy": (200, 150, 120), "mri": (60, 60, 60), "ct": (110, 110, 110),
                 "xray": (170, 170, 170), "fundus": (180, 70, 30), "pathology": (220, 160, 210)}
ARCH = {"image_size": 32, "patch_size": 8, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2,
        "num_heads": 2, "vision_hidden_size": 32, "vision_layers": 2, "mm_tokens_per_image": 16}
SPECS = {
    "tiny_llava": {"kind": "tiny", "family": "llava", "dtype": "float32", "batch_size": 32,
                   "box_convention": "norm1000", "arch": ARCH, "image_position": "before"},
    "tiny_gemma3": {"kind": "tiny", "family": "gemma3", "dtype": "float32", "batch_size": 32,
                    "box_convention": "norm1000", "arch": {**ARCH, "mm_tokens_per_image": 4},
                    "image_position": "before",
                    "system_prompt": "You are an expert medical imaging specialist."},
}
TRAINING = {"vocab_size": 400, "epochs": 12, "min_epochs": 2, "batch_size": 32, "lr": 0.005,
            "vision_lr_scale": 0.2, "weight_decay": 0.0, "stop_at_chance_multiple": 2.5,
            "vqa_target": "option_text"}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "out_proj"],
        "target_scope": "vision_tower", "epochs": 2, "batch_size": 8, "lr": 0.001, "weight_decay": 0.0,
        "grad_clip": 1.0, "max_train_samples": 24}


def write_canonical_shards(root: Path, n_images: int, modalities=tuple(MODALITY_LOOK)) -> list[Path]:
    """Canonical shards of tiny synthetic images: a modality-specific colour and texture, one disc lesion."""
    paths = []
    for mod in modalities:
        ds = f"syn_{mod}"
        rows: dict[str, list] = {"train": [], "val": [], "test": []}
        for i in range(n_images):
            rng = rng_for("vlm_test_image", ds, i)
            noise = rng.normal(0, 20, (48, 48, 3))
            img = np.clip(np.array(MODALITY_LOOK[mod])[None, None, :] + noise, 0, 255)
            img = img.astype(np.uint8)
            if mod in ("mri", "ct", "xray"):
                img = img[:, :, 0].copy()
            yy, xx = np.mgrid[:48, :48]
            cy, cx = rng.integers(8, 40, 2)
            mask = (((yy - cy) ** 2 + (xx - cx) ** 2) <= int(rng.integers(3, 12)) ** 2).astype(np.uint8) * 255
            img[mask > 0] = 255 - img[mask > 0]
            u = unit_hash(ds, i)
            split = "train" if u < 0.6 else ("val" if u < 0.8 else "test")
            ys, xs = np.nonzero(mask)
            rows[split].append({
                "image_id": f"img{i:03d}", "dataset": ds, "modality": mod, "split": split,
                "image_png": encode_png(img), "mask_png": encode_png(mask),
                "box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
                "height": 48, "width": 48,
                "channels": 1 if img.ndim == 2 else 3, "source": "synthetic",
            })
        for split, recs in rows.items():
            p = root / "data" / ds / f"{split}.parquet"
            write_parquet_atomic(p, pd.DataFrame(recs))
            paths.append(p)
    return paths


def build_tables(root: Path, n_images: int, **kwargs) -> dict[str, Path]:
    shards = write_canonical_shards(root, n_images, **kwargs)
    tables = {}
    for task in ("vqa", "caption", "grounding"):
        out = root / "vlm" / f"{task}.parquet"
        build_and_write(out, "demo", {"adapter": "demo"}, task, sampling={"n_test": None, "n_val": None,
                        "n_train": None}, seed=0, shards=shards)
        tables[task] = out
    return tables


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict[str, Path]:
    return build_tables(tmp_path_factory.mktemp("vlm_tables"), 12)


@pytest.fixture(scope="module")
def trained(tables, tmp_path_factory) -> dict[str, dict]:
    """tiny_llava briefly trained (2 epochs) on small synthetic demo sets: the base for the LoRA tests."""
    from medfm_robust.vlm.train import train_tiny_from_tables

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("vlm_models")
    settings = {**TRAINING, "epochs": 2, "min_epochs": 2}
    info = train_tiny_from_tables("tiny_llava", SPECS["tiny_llava"], settings, tables, root / "tiny_llava",
                                  root / "tiny_llava.json", max_new_tokens=8)
    return {"tiny_llava": {"dir": root / "tiny_llava", "info": info}}


# ----------------------------------------------------------------------------------------- builders


@pytest.mark.parametrize("name", sorted(SPECS))
def test_tiny_model_round_trips_through_the_real_loader(name, tmp_path):
    """save_pretrained -> AutoModelForImageTextToText / AutoProcessor (the path of the real checkpoints)."""
    from medfm_robust.vlm.models import load_vlm
    from medfm_robust.vlm.tiny import build_tiny, save_tiny

    spec = SPECS[name]
    torch.manual_seed(0)
    texts = ["What modality is shown?", "[1, 2, 3, 4]"]
    model, processor = build_tiny(spec["family"], texts, spec["arch"], 320)
    assert type(model).__name__ == ("LlavaForConditionalGeneration" if spec["family"] == "llava"
                                    else "Gemma3ForConditionalGeneration")
    save_tiny(model, processor, tmp_path / name)
    vlm = load_vlm(name, spec, model_dir=tmp_path / name, device="cpu")
    assert type(vlm.model).__name__ == type(model).__name__
    assert vlm.revision.startswith(f"{name}@") and len(vlm.revision) > len(name) + 8
    images = [np.full((20, 30), 40 * i, np.uint8) for i in range(3)] + [np.zeros((16, 16, 3), np.uint8)]
    prompts = ["What modality?", "Describe the image in one sentence please.", "Where?", "x"]
    out = vlm.generate(images, prompts, "caption", 5)
    assert len(out) == 4 and all(isinstance(o, str) for o in out)
    if spec["family"] == "gemma3":  # a model turn ends at <end_of_turn> (as in the real checkpoints)
        eot = vlm.tokenizer.convert_tokens_to_ids("<end_of_turn>")
        assert eot in vlm.model.generation_config.eos_token_id
    # identical weights reload to the identical revision
    assert load_vlm(name, spec, model_dir=tmp_path / name, device="cpu").revision == vlm.revision


def test_tokenizer_is_byte_level_and_has_image_tokens():
    from medfm_robust.vlm.tiny import build_tokenizer

    tok = build_tokenizer(["a CT image of the liver", "[120, 40, 300, 500]"], vocab_size=300)
    text = "Unseen wörds ✓ 0.731"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.convert_tokens_to_ids(tok.image_token) != tok.unk_token_id
    assert tok.padding_side == "left"


def test_missing_model_folder_names_it(tmp_path):
    from medfm_robust.vlm.models import load_vlm

    spec = {"kind": "local", "path": "vlm/medgemma-4b-it", "dtype": "bfloat16"}
    with pytest.raises(CheckpointError, match=r"medgemma.*resources_x/vlm/medgemma-4b-it.*not found"):
        load_vlm("medgemma", spec, resources_dir=tmp_path / "resources_x")
    (tmp_path / "resources_x" / "vlm" / "medgemma-4b-it").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_vlm("medgemma", spec, resources_dir=tmp_path / "resources_x")
    with pytest.raises(ConfigError, match=r"vlm\.models\.medgemma\.path"):
        load_vlm("medgemma", {"kind": "local"}, resources_dir=tmp_path)


def test_box_convention_falls_back_to_the_endpoint():
    from medfm_robust.vlm.models import box_convention

    api = {"endpoints": {"gemini_2_5_flash": {"box_convention": "yxyx1000"}}}
    assert box_convention("gemini_2_5_flash", {"kind": "api"}, api) == "yxyx1000"
    assert box_convention("gemini_2_5_flash", {"kind": "api", "box_convention": "pixel"}, api) == "pixel"
    assert box_convention("tiny_llava", {"kind": "tiny"}) == "pixel"


def test_uint16_images_are_mapped_linearly_not_stretched():
    from medfm_robust.vlm.models import to_pil_rgb

    img = np.full((4, 4), 1000, np.uint16)
    arr = np.asarray(to_pil_rgb(img))
    assert arr.shape == (4, 4, 3) and int(arr.max()) == round(1000 / 257)


# ----------------------------------------------------------------------------------------- training


def test_response_only_labels(tables):
    """Loss covers the rendered answer (and the end-of-turn token) only, never the prompt or image tokens."""
    from medfm_robust.vlm.tiny import build_tiny
    from medfm_robust.vlm.train import encode_examples, examples_from_table

    spec = SPECS["tiny_gemma3"]
    exs = examples_from_table(read_samples(tables["vqa"]), "vqa", "norm1000", vqa_target="option_text",
                              split="train")[:3]
    texts = [e.prompt for e in exs] + [e.answer for e in exs]
    _, processor = build_tiny(spec["family"], texts, spec["arch"], 320)
    enc = encode_examples(processor, exs, system_prompt=spec["system_prompt"])
    for ex, item in zip(exs, enc, strict=True):
        target = item["input_ids"][item["labels"] >= 0]
        assert processor.tokenizer.decode(target) == f"{ex.answer}<end_of_turn>\n"
        assert (item["labels"][: len(item["input_ids"]) - len(target)] == -100).all()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_vision_tower_trains_at_its_own_learning_rate(name):
    """param_groups: every trainable weight exactly once; the vision tower (and only it) at lr x scale."""
    from medfm_robust.vlm.tiny import build_tiny
    from medfm_robust.vlm.train import param_groups

    spec = SPECS[name]
    model, _ = build_tiny(spec["family"], ["a CT image", "[1, 2, 3, 4]"], spec["arch"], 300)
    model.model.language_model.embed_tokens.weight.requires_grad_(False)
    groups = param_groups(model, 0.005, 0.2)
    assert [g["lr"] for g in groups] == [0.005, pytest.approx(0.001)]
    vision_ids = {id(p) for p in model.model.vision_tower.parameters()}
    assert {id(p) for p in groups[1]["params"]} == vision_ids
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(p.requires_grad for p in model.parameters())
    assert not vision_ids & {id(p) for p in model.model.multi_modal_projector.parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPECS))
def test_tiny_model_reaches_twice_chance_on_clean_vqa(name, tmp_path):
    """The demo numbers mean something: trained by the workflow's own function, clean VQA accuracy on the
    held-out test split is >= 2 x chance (chance = mean of 1 / number of options)."""
    from medfm_robust.vlm.models import load_vlm
    from medfm_robust.vlm.run import build_conditions, evaluate_conditions
    from medfm_robust.vlm.train import train_tiny_from_tables

    torch.set_num_threads(1)
    tabs = build_tables(tmp_path / "data", 40)
    info = train_tiny_from_tables(name, SPECS[name], TRAINING, tabs, tmp_path / name, tmp_path / "info.json",
                                  max_new_tokens=8)
    assert json.loads((tmp_path / "info.json").read_text())["epochs_run"] == info["epochs_run"]
    vlm = load_vlm(name, SPECS[name], model_dir=tmp_path / name, device="cpu")
    frames = build_conditions(tabs["vqa"], "vqa", {}, levels=[1])
    out = evaluate_conditions(vlm, frames, {"clean": tmp_path / "clean.parquet"}, task="vqa",
                              convention="norm1000", max_new_tokens=8)["clean"]
    test = read_samples(tabs["vqa"]).query("split == 'test'")
    chance = float(np.mean([1 / len(o) for o in test["options"]]))
    assert len(out) == len(test) > 30
    assert out["correct"].mean() >= 2 * chance, (out["correct"].mean(), chance, info["history"])
    assert out["parse_ok"].mean() > 0.9


def test_batched_generation_equals_one_by_one(trained, tables):
    """Left padding: a sample's greedy answer does not depend on its batch mates."""
    from medfm_robust.io import decode_png
    from medfm_robust.vlm.models import load_vlm
    from medfm_robust.vlm.prompts import build_prompt

    recs = read_samples(tables["caption"]).head(6).to_dict("records")
    images = [decode_png(r["image_png"]) for r in recs]
    prompts = [build_prompt("caption", r) for r in recs]
    prompts[1] += " Please be brief."  # different prompt lengths -> real padding
    folder = trained["tiny_llava"]["dir"]
    batched = load_vlm("tiny_llava", {**SPECS["tiny_llava"], "batch_size": 6}, model_dir=folder)
    single = load_vlm("tiny_llava", {**SPECS["tiny_llava"], "batch_size": 1}, model_dir=folder)
    assert batched.generate(images, prompts, "caption", 12) == single.generate(images, prompts, "caption", 12)


# --------------------------------------------------------------------------------------- grounding LoRA


def _finetune(trained, tables, root: Path, **kwargs):
    from medfm_robust.vlm.grounding_lora import finetune_grounding

    return finetune_grounding("tiny_llava", SPECS["tiny_llava"], {**LORA, **kwargs.pop("settings", {})},
                              base_dir=trained["tiny_llava"]["dir"], samples_path=tables["grounding"],
                              out_dir=root / "adapter", info_path=root / "adapter.json",
                              state_path=root / "state.pt", convention="norm1000", device="cpu", **kwargs)


def test_lora_targets_only_vision_attention_with_paper_rank(trained, tables, tmp_path):
    info = _finetune(trained, tables, tmp_path)
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and cfg["lora_alpha"] == 32 and cfg["peft_type"] == "LORA"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    mods = info["adapted_modules"]
    assert mods and all(".vision_tower." in m for m in mods)
    assert {m.split(".")[-2] for m in mods} == {"q_proj", "k_proj", "v_proj", "out_proj"}
    # 2 vision layers x 4 projections x r x (32 in + 32 out)
    assert info["trainable_parameters"] == 2 * 4 * 16 * (32 + 32)
    assert not (tmp_path / "state.pt").exists()  # removed once finished


def test_lora_adapter_round_trip_changes_and_restores_the_model(trained, tables, tmp_path):
    """Evaluation loads the saved adapter: merged weights equal the trained PEFT model's, not the base."""
    from peft import PeftModel

    from medfm_robust.vlm.models import load_local_vlm

    _finetune(trained, tables, tmp_path)
    base = load_local_vlm("tiny_llava", trained["tiny_llava"]["dir"], dtype="float32")
    tuned = load_local_vlm("tiny_llava", trained["tiny_llava"]["dir"], dtype="float32",
                           adapter_dir=tmp_path / "adapter")
    assert "+lora-" in tuned.revision and tuned.revision != base.revision
    key = "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"
    w_base, w_tuned = base.model.state_dict()[key], tuned.model.state_dict()[key]
    assert not torch.allclose(w_base, w_tuned)  # the LoRA factors were trained (vision tower gets gradients)
    ref = PeftModel.from_pretrained(load_local_vlm("tiny_llava", trained["tiny_llava"]["dir"],
                                                   dtype="float32").model, tmp_path / "adapter")
    pv = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        a = ref.base_model.model.model.vision_tower(pv).last_hidden_state
        b = tuned.model.model.vision_tower(pv).last_hidden_state
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_lora_resume_equals_uninterrupted(trained, tables, tmp_path):
    from safetensors.torch import load_file

    full = _finetune(trained, tables, tmp_path / "full")

    class Interrupt(Exception):
        pass

    def stop(epoch: int) -> None:
        if epoch == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        _finetune(trained, tables, tmp_path / "cut", on_epoch_end=stop)
    assert (tmp_path / "cut" / "state.pt").is_file() and not (tmp_path / "cut" / "adapter").exists()
    resumed = _finetune(trained, tables, tmp_path / "cut")
    assert resumed["resumed_from_epoch"] == 1
    assert resumed["history"] == full["history"]
    a = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a state written under other settings is not resumed
    with pytest.raises(Interrupt):
        _finetune(trained, tables, tmp_path / "other", on_epoch_end=stop)
    again = _finetune(trained, tables, tmp_path / "other", settings={"lr": 0.002})
    assert again["resumed_from_epoch"] is None


def test_lora_bad_targets_are_a_config_error(trained, tables, tmp_path):
    with pytest.raises(ConfigError, match="target_modules"):
        _finetune(trained, tables, tmp_path, settings={"target_modules": ["no_such_proj"]})
