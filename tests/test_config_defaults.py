"""Defaults live in one place (issue 16 req 6): the schema's ``default`` fields, which validation fills into
a config and :func:`~medfm_robust.config.with_defaults` fills into a partial section handed to a library
function; the library keeps no default literal of its own that could disagree."""

from __future__ import annotations

import copy

import pytest

from medfm_robust.config import (
    REPO_ROOT,
    default_config,
    load_yaml,
    section_defaults,
    validate_config,
    with_defaults,
)

MINIMAL_MODEL = {"kind": "tiny", "family": "gemma3", "tasks": ["vqa"]}


def _validated_with_model(entry: dict) -> dict:
    cfg = load_yaml(REPO_ROOT / "config" / "config.yaml")
    cfg["vlm"]["models"]["m"] = copy.deepcopy(entry)
    return validate_config(cfg)["vlm"]["models"]["m"]


@pytest.mark.parametrize("section", ["vlm.api", "vlm.tiny_training", "vlm.grounding_finetune", "vlm.sampling",
                                     "report", "finetune", "segmentation"])
def test_section_defaults_are_what_validation_fills_in(section: str) -> None:
    node = default_config()
    for part in section.split("."):
        node = node[part]
    defaults = section_defaults(section)
    assert defaults and {k: node[k] for k in defaults} == defaults


def test_list_entry_defaults_nest_like_validation() -> None:
    validated = _validated_with_model({**MINIMAL_MODEL, "arch": {"hidden_size": 96}})
    filled = with_defaults("vlm.models.*", {**MINIMAL_MODEL, "arch": {"hidden_size": 96}})
    assert filled == validated
    assert filled["arch"]["hidden_size"] == 96 and filled["arch"]["num_layers"] == 2
    # a user's name-keyed mapping replaces the default one, as in validation (no merging of endpoints)
    endpoints = with_defaults("vlm.api", {"endpoints": {"mine": {}}})["endpoints"]
    assert list(endpoints) == ["mine"] and endpoints["mine"]["image_detail"] == "high"


def test_unknown_section_is_an_error() -> None:
    with pytest.raises(KeyError):
        section_defaults("vlm.no_such_section")


def test_library_defaults_are_the_schema_defaults() -> None:
    from medfm_robust.seg.evaluate import EvalSettings
    from medfm_robust.vlm.grounding_lora import lora_config

    seg_model = section_defaults("segmentation.models.*")
    assert EvalSettings().batch_size == seg_model["batch_size"]
    lora = section_defaults("vlm.grounding_finetune")
    cfg = lora_config({"r": 4, "alpha": 8, "target_modules": ["q_proj"]})
    assert cfg.lora_dropout == lora["dropout"] and cfg.r == 4


def test_seg_cli_batch_size_default_is_the_schema_default() -> None:
    import argparse

    from medfm_robust.seg.cli import _eval_settings, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = ["seg-eval", "--model", "tiny_sam", "--dataset", "d", "--test", "t.parquet", "--out-dir", "o"]
    settings = _eval_settings(parser.parse_args(args))
    assert settings.batch_size == section_defaults("segmentation.models.*")["batch_size"]
    assert _eval_settings(parser.parse_args([*args, "--batch-size", "3"])).batch_size == 3
