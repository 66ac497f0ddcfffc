"""VLM registries (issue 16): the dataset-reader and task registries, and the schema enums they own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from medfm_robust.errors import ConfigError
from medfm_robust.perturb.registry import MODALITIES
from medfm_robust.vlm.datasets import READERS, build_sample_table, dataset_tasks, register, to_frame
from medfm_robust.vlm.datasets import registry as reader_registry
from medfm_robust.vlm.tasks import REGISTRY as TASK_REGISTRY
from medfm_robust.vlm.tasks import TASKS

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "schema.yaml").read_text())
VLM = SCHEMA["properties"]["vlm"]["properties"]


def test_schema_adapter_enum_is_the_reader_registry() -> None:
    entry = VLM["datasets"]["additionalProperties"]["properties"]
    assert sorted(entry["adapter"]["enum"]) == sorted(READERS)
    assert entry["tasks"]["items"]["enum"] == list(TASKS)


def test_schema_task_enums_and_keys_are_the_task_registry() -> None:
    model = VLM["models"]["additionalProperties"]["properties"]
    assert model["tasks"]["items"]["enum"] == list(TASKS)
    assert model["tasks"]["default"] == list(TASKS)
    assert list(model["max_new_tokens"]["properties"]) == list(TASKS)
    assert list(VLM["tasks"]["properties"]) == list(TASKS)
    assert set(VLM["judge"]["properties"]["tasks"]["items"]["enum"]) <= set(TASKS)
    report = SCHEMA["properties"]["report"]["properties"]["vlm_metrics"]
    assert list(report["properties"]) == list(TASKS)
    for task, prop in report["properties"].items():  # bleu4_corpus: corpus BLEU from the per-sample counts
        assert set(prop["enum"]) - {"bleu4_corpus"} <= set(TASK_REGISTRY[task].scores), task


def test_one_modality_vocabulary() -> None:
    from medfm_robust.data.demo import showcase_images
    from medfm_robust.vlm.datasets import SHOWCASE_MODALITIES, common

    assert SCHEMA["$defs"]["modality"]["enum"] == list(MODALITIES)
    assert common.MODALITIES is MODALITIES
    assert sorted(SHOWCASE_MODALITIES) == sorted({m for m, _ in showcase_images().values()})


def test_every_reader_provides_registered_tasks_and_is_described() -> None:
    for name, spec in READERS.items():
        assert spec.tasks and set(spec.tasks) <= set(TASKS), name
        assert spec.description, name
    assert dataset_tasks({"adapter": "demo", "tasks": ["caption"]}) == ["caption"]
    assert dataset_tasks({"adapter": "demo"}) == list(TASKS)
    assert dataset_tasks({"adapter": "mecovqa"}) == ["grounding"]


def test_a_registered_reader_is_dispatched_to(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Adding a reader = one module with one registration: build_sample_table finds it by its name."""
    monkeypatch.setattr(reader_registry, "_READERS", dict(reader_registry._READERS))
    calls: list[tuple[Any, ...]] = []

    @register("toy", tasks=("caption",))
    def _toy(name: str, spec: Any, task: str, ctx: reader_registry.BuildContext) -> pd.DataFrame:
        """Toy captions."""
        calls.append((name, task, ctx.root))
        row = {"sample_id": "a", "dataset": name, "task": task, "modality": "ct", "split": "test",
               "image_id": "a", "image_png": b"", "height": 1, "width": 1, "question": "q",
               "question_type": "caption", "options": [], "answer": "x", "reference": "x", "box": None,
               "source": "", "mask_png": None, "canonical_id": ""}
        return to_frame([row])

    df = build_sample_table("t", {"adapter": "toy", "path": str(tmp_path)}, "caption", sampling={}, seed=0)
    assert calls == [("t", "caption", tmp_path)] and list(df["sample_id"]) == ["a"]
    with pytest.raises(ConfigError, match="does not provide task 'vqa'"):
        build_sample_table("t", {"adapter": "toy", "path": str(tmp_path)}, "vqa", sampling={}, seed=0)
    with pytest.raises(ConfigError, match=r"vlm\.datasets\.t\.path"):
        build_sample_table("t", {"adapter": "toy"}, "caption", sampling={}, seed=0)
    with pytest.raises(ValueError, match="registered twice"):
        register("toy", tasks=("caption",))(_toy)
    with pytest.raises(ConfigError, match="unknown adapter 'nope'"):
        build_sample_table("t", {"adapter": "nope"}, "caption", sampling={}, seed=0)


def test_one_demo_modality_answer_for_workflow_and_library() -> None:
    """The rules' modalities (which perturbation files a dataset gets) are the library's: the demo's
    sources plus its showcase images (they were two answers; the rules' missed the showcase ones)."""
    from medfm_robust.vlm import workflow as wf
    from medfm_robust.vlm.datasets import dataset_modalities

    cfg = {"datasets": {"a": {"modality": "dermoscopy"}, "b": {"modality": "ct"}},
           "vlm": {"datasets": {"d": {"adapter": "demo", "sources": ["a"]},
                                "n": {"adapter": "demo", "sources": ["a"], "showcase": False},
                                "r": {"adapter": "rocov2", "path": "x"}}}}
    for name, spec in cfg["vlm"]["datasets"].items():
        assert wf.modalities(cfg, name) == dataset_modalities(spec, cfg), name
    assert wf.modalities(cfg, "d") == ["dermoscopy", "mri", "ct", "fundus", "pathology"]
    assert wf.modalities(cfg, "n") == ["dermoscopy"]
    assert wf.modalities(cfg, "r") == list(MODALITIES)
