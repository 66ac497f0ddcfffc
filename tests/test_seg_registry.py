"""The segmentation model and strategy registries: every other list of their names agrees with them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from medfm_robust.config import SCHEMA_PATH, load_yaml
from medfm_robust.data import fixtures
from medfm_robust.errors import ConfigError
from medfm_robust.report import palette
from medfm_robust.seg import finetune_config
from medfm_robust.seg.models import (
    MODEL_SPECS,
    build_model,
    get_model_spec,
    register_model,
    resolve_checkpoint,
)
from medfm_robust.seg.strategies import apply_strategy
from medfm_robust.seg.strategy_registry import STRATEGY_SPECS, StrategySpec, get_strategy, register_strategy


def _enums(node: Any) -> Iterator[list[Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("enum"), list):
            yield node["enum"]
        for v in node.values():
            yield from _enums(v)
    elif isinstance(node, list):
        for v in node:
            yield from _enums(v)


def test_schema_enums_match_registries() -> None:
    enums = list(_enums(load_yaml(SCHEMA_PATH)))
    models = [e for e in enums if "medsam" in e]
    strategies = [e for e in enums if "zero_shot" in e]
    assert models == [list(MODEL_SPECS)]  # written once ($defs.seg_model), referenced where used
    assert strategies == [list(STRATEGY_SPECS)]  # likewise $defs.strategy


def test_palette_fixtures_and_config_names_follow_registries() -> None:
    for name in MODEL_SPECS:
        assert name in palette.MODEL_LABELS and name in palette.MODEL_COLORS
    assert palette.STRATEGY_ORDER == finetune_config.STRATEGIES == tuple(STRATEGY_SPECS)
    assert palette.label("dec_prompt") == "Dec-Prompt" and palette.strategy_color("lora") == "#d62728"
    official = [s.checkpoint_file for s in MODEL_SPECS.values() if s.checkpoint_source == "official"]
    assert list(fixtures.CHECKPOINTS) == official
    trained = tuple(n for n in STRATEGY_SPECS if n != "zero_shot")
    assert trained == finetune_config.TRAINED_STRATEGIES


def test_unknown_names_fail_in_one_place() -> None:
    with pytest.raises(ConfigError, match=r"unknown segmentation model 'sam3'.*medsam"):
        get_model_spec("sam3")
    with pytest.raises(ConfigError, match="unknown segmentation model"):
        build_model("sam3")
    with pytest.raises(ConfigError, match="'bundled' exists only for lite_medsam, not medsam"):
        resolve_checkpoint("medsam", "bundled")
    with pytest.raises(ConfigError, match="unknown fine-tuning strategy 'partial'"):
        get_strategy("partial")
    with pytest.raises(ConfigError, match="unknown fine-tuning strategy"):
        finetune_config.run_settings({"models": {"tiny_sam": {}}}, "tiny_sam", "partial")
    with pytest.raises(ValueError, match="registered twice"):
        register_model("medsam", family="x", input_size=1, normalisation="", checkpoint_file="")(lambda: None)


def test_strategy_definitions_own_rule_and_structure() -> None:
    assert get_strategy("lora").structure(StrategySpec("lora", lora_r=4)) == {
        "name": "lora", "lora": {"r": 4, "alpha": 32.0, "dropout": 0.1, "targets": ["qkv", "proj"]},
        "train_decoder": False, "train_prompt_encoder": False,
    }
    assert MODEL_SPECS["tiny_sam"].adapters == "insertable" and MODEL_SPECS["sam_med2d"].adapters == "native"


def test_adding_a_strategy_is_one_registered_definition() -> None:
    """A new strategy (train only the prompt encoder) registered once is validated, applied and reported."""

    @register_strategy("prompt_only", label="Prompt-Only", colour="#000000")
    def _prompt_only(model, spec, parts):  # type: ignore[no-untyped-def]
        """Prompt encoder."""
        parts[1].requires_grad_(True)
        return []

    try:
        torch.manual_seed(0)
        model = build_model("tiny_sam")
        report = apply_strategy(model, StrategySpec.from_config("prompt_only", {}))
        assert report.trainable_names and all(n.startswith("prompt_encoder.") for n in report.trainable_names)
        assert StrategySpec("prompt_only").structure() == {"name": "prompt_only"}
        assert get_strategy("prompt_only").description == "Prompt encoder."
    finally:
        STRATEGY_SPECS.remove("prompt_only")
