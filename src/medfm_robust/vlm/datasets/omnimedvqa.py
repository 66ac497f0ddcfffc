"""OmniMedVQA (multiple-choice VQA) in its published layout."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medfm_robust.errors import DataError
from medfm_robust.vlm.datasets.common import LETTERS, _png_from_file, _progress, map_modality, to_frame
from medfm_robust.vlm.datasets.registry import BuildContext, register

log = logging.getLogger(__name__)

def read_omnimedvqa(
    root: str | Path,
    *,
    dataset: str = "omnimedvqa",
    access: Sequence[str] = ("Open-access",),
    modality_map: Mapping[str, str] | None = None,
    on_missing: str = "fail",
) -> pd.DataFrame:
    """Read OmniMedVQA in its published layout as a VQA sample table (split ``test``).

    Layout: ``root/QA_information/<access>/*.json``, each a list of items with ``question``,
    ``option_A``..``option_D`` (C and D may be absent), ``gt_answer`` (the text of one option),
    ``modality_type``, ``image_path`` (relative to ``root``; a ``${dataset_root_path}/`` prefix is
    stripped), ``question_id``, ``question_type`` and ``dataset``. Images are stored as lossless PNG.
    ``on_missing='skip'`` drops items whose image file is missing (logged with their count); otherwise
    a missing image is a ``DataError``.
    """
    root = Path(root)
    rows: list[dict[str, Any]] = []
    image_cache: dict[Path, tuple[bytes, int, int]] = {}
    skipped = 0
    for file in _qa_files(root, access):
        for idx, item in enumerate(_progress(_json_items(file), f"OmniMedVQA {file.name}")):
            row = _item_row(item, root=root, file=file, idx=idx, dataset=dataset, modality_map=modality_map,
                            on_missing=on_missing, image_cache=image_cache)
            if row is None:
                skipped += 1
            else:
                rows.append(row)
    if skipped:
        log.warning("%s: skipped %d OmniMedVQA items whose image is missing", root, skipped)
    if not rows:
        raise DataError(f"{root}: no usable OmniMedVQA items")
    return to_frame(rows)


def _qa_files(root: Path, access: Sequence[str]) -> list[Path]:
    """The QA JSON files under ``root/QA_information/<access>/`` (sorted per folder)."""
    files: list[Path] = []
    for sub in access:
        folder = root / "QA_information" / sub
        if not folder.is_dir():
            raise DataError(f"{folder}: OmniMedVQA QA folder not found")
        files.extend(sorted(folder.glob("*.json")))
    if not files:
        raise DataError(f"{root}: no OmniMedVQA QA JSON files under QA_information/{list(access)}")
    return files


def _json_items(file: Path) -> list[Any]:
    """The list of QA items of one JSON file."""
    try:
        items = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{file}: cannot read OmniMedVQA JSON ({exc})") from exc
    if not isinstance(items, list):
        raise DataError(f"{file}: expected a list of QA items")
    return items


def _options_and_answer(item: Mapping[str, Any], where: str) -> tuple[list[str], int]:
    """The item's options (A, B, then C, D while present) and the index of ``gt_answer`` among them
    (exact match, else case-insensitive; it must match exactly one)."""
    options = []
    for letter in "ABCD":
        val = item.get(f"option_{letter}")
        if val is None or str(val).strip() == "":
            break
        options.append(str(val).strip())
    answer_text = str(item["gt_answer"]).strip()
    matches = [i for i, o in enumerate(options) if o == answer_text]
    if not matches:
        matches = [i for i, o in enumerate(options) if o.lower() == answer_text.lower()]
    if len(matches) != 1:
        raise DataError(f"{where}: gt_answer {answer_text!r} is not exactly one of the options {options}")
    return options, matches[0]


def _item_row(item: Mapping[str, Any], *, root: Path, file: Path, idx: int, dataset: str,
              modality_map: Mapping[str, str] | None, on_missing: str,
              image_cache: dict[Path, tuple[bytes, int, int]]) -> dict[str, Any] | None:
    """The sample row of QA item ``idx`` of ``file``; None when its image is missing and skipped."""
    where = f"{file}[{idx}]"
    if "modality_type" not in item and "modality" in item:
        # One published item (Chest CT Scan.json) spells the field `modality`.
        log.info("%s: field 'modality' read as 'modality_type'", where)
        item = {**item, "modality_type": item["modality"]}
    for key in ("question", "gt_answer", "modality_type", "image_path", "option_A", "option_B"):
        if key not in item:
            raise DataError(f"{where}: missing field '{key}'")
    options, answer = _options_and_answer(item, where)
    rel = str(item["image_path"]).replace("${dataset_root_path}/", "").lstrip("/")
    img_path = root / rel
    if not img_path.is_file():
        if on_missing == "skip":
            return None
        raise DataError(f"{where}: image file {img_path} not found (field 'image_path')")
    if img_path not in image_cache:
        image_cache[img_path] = _png_from_file(img_path)
    png, h, w = image_cache[img_path]
    qid = str(item.get("question_id", f"{file.stem}_{idx}"))
    modality = map_modality(item["modality_type"], extra=modality_map, where=f"{where}.modality_type")
    return {
        "sample_id": qid, "dataset": dataset, "task": "vqa", "modality": modality, "split": "test",
        "image_id": rel, "image_png": png, "height": h, "width": w,
        "question": str(item["question"]).strip(),
        "question_type": str(item.get("question_type", "")),
        "options": options, "answer": LETTERS[answer], "reference": options[answer],
        "box": None, "source": f"{file.relative_to(root)}#{qid}",
    }


@register("omnimedvqa", tasks=("vqa",))
def _omnimedvqa_from_config(name: str, spec: Mapping[str, Any], task: str, ctx: BuildContext) -> pd.DataFrame:
    """OmniMedVQA: multiple-choice VQA (``access``: the QA_information subfolders read)."""
    assert ctx.root is not None
    return read_omnimedvqa(ctx.root, dataset=name, access=spec["access"],
                           modality_map=spec.get("modality_map"), on_missing=spec["on_missing"])
