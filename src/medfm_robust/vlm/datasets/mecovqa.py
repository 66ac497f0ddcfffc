"""MeCoVQA grounding (MedPLIB) JSON files: flat records or LLaVA conversations, boxes or masks."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfm_robust.boxes import box_from_mask, box_text
from medfm_robust.errors import ConfigError, DataError
from medfm_robust.io import encode_png, read_image
from medfm_robust.vlm.datasets.box_formats import detect_box_format, normalise_box
from medfm_robust.vlm.datasets.common import (
    _png_from_file,
    _progress,
    map_modality,
    to_frame,
)
from medfm_robust.vlm.datasets.registry import BuildContext, register

log = logging.getLogger(__name__)

_NUM = r"-?\d+(?:\.\d+)?"


def _record_question_and_box(item: Mapping[str, Any], where: str) -> tuple[str, Any, str | None]:
    """(question, box-or-None, mask path-or-None) from a flat or LLaVA-conversation record."""
    question = item.get("question")
    box = item.get("box", item.get("bbox"))
    mask = item.get("mask") or item.get("mask_path")
    conv = item.get("conversations")
    if conv is not None:
        human = next((t["value"] for t in conv if t.get("from") in ("human", "user")), None)
        gpt = next((t["value"] for t in conv if t.get("from") in ("gpt", "assistant")), None)
        if question is None and human is not None:
            question = human
        if box is None and mask is None and gpt is not None:
            m = re.search(r"<mask>(.*?)</mask>", gpt)
            if m:
                mask = m.group(1).strip()
            else:
                nums = re.findall(_NUM, gpt)
                if len(nums) >= 4:
                    box = [float(n) for n in nums[:4]]
    if question is None:
        raise DataError(f"{where}: no 'question' (or human turn in 'conversations')")
    question = " ".join(re.sub(r"<(?:image|im_start|im_end|Image|/Image)>", " ", str(question)).split())
    if box is None and mask is None:
        raise DataError(f"{where}: no 'box'/'bbox', 'mask' or box in the answer turn")
    return question, box, mask


def read_mecovqa(
    root: str | Path,
    *,
    dataset: str = "mecovqa",
    files: Mapping[str, str] | None = None,
    box_format: str = "auto",
    modality: str | None = None,
    modality_map: Mapping[str, str] | None = None,
    on_missing: str = "fail",
    images_dir: str | None = None,
) -> pd.DataFrame:
    """Read MeCoVQA grounding JSON files as a grounding sample table.

    ``files`` maps our split (``train``/``test``) to a JSON file relative to ``root`` (default
    ``{"test": "MeCoVQA_Grounding_test.json"}``). Each file is a list of records with ``image`` (path
    relative to ``root``), ``id`` (optional), and either a flat ``question`` + ``box`` (alias ``bbox``)
    or LLaVA ``conversations`` (human turn = question, gpt turn = box numbers or ``<mask>path</mask>``);
    a ``mask`` field (path) also gives the box. Box convention (``box_format``): ``xyxy_pixel``,
    ``xyxy_norm1``, ``xyxy_norm1000``, ``xywh_pixel``, or ``auto`` (:func:`detect_box_format` over all
    records of the file, logged). Every box is normalised to inclusive pixel ``[x0, y0, x1, y1]``.
    Modality: the record's ``modality`` field, else the SA-Med2D file-name prefix
    (``ct_``, ``mr_``, ``x_ray_``, ...), else ``modality``; unknown labels raise ``DataError``.
    ``images_dir`` (relative to ``root``) is where ``image`` and mask paths are resolved (default ``root``;
    MedPLIB keeps them in the SA-Med2D folder).
    """
    root = Path(root)
    img_root = root / images_dir if images_dir else root
    files = dict(files or {"test": "MeCoVQA_Grounding_test.json"})
    rows: list[dict[str, Any]] = []
    for split in sorted(files):
        if split not in ("train", "val", "test"):
            raise ConfigError(f"MeCoVQA files: split '{split}' is not train/val/test")
        path = root / files[split]
        records = _records(path, img_root, on_missing)
        fmt = _file_box_format(records, box_format, path)
        for rec in records:
            where = f"{path}[{rec.idx}]"
            pix, mask_png = _target(rec, fmt, img_root, where)
            mod = _mecovqa_modality(rec.item, rec.img, modality, modality_map, where)
            sid = str(rec.item.get("id", f"{split}_{rec.idx}"))
            rows.append({
                "sample_id": sid if split == "test" else f"{split}/{sid}", "dataset": dataset,
                "task": "grounding", "modality": mod, "split": split, "image_id": str(rec.item["image"]),
                "image_png": rec.png, "height": rec.height, "width": rec.width, "question": rec.question,
                "question_type": "grounding", "options": [], "answer": box_text(pix),
                "reference": box_text(pix), "box": pix, "source": f"{files[split]}[{rec.idx}]",
                "mask_png": mask_png, "canonical_id": "",
            })
    if not rows:
        raise DataError(f"{root}: no usable MeCoVQA grounding records")
    return to_frame(rows)


@dataclass(frozen=True)
class _Record:
    """One usable record of a grounding file: its index, fields, target (box or mask path) and image."""

    idx: int
    item: dict[str, Any]
    box: Any
    img: Path
    png: bytes
    height: int
    width: int
    question: str
    mask: str | None


def _records(path: Path, img_root: Path, on_missing: str) -> list[_Record]:
    """The records of one grounding JSON file whose image exists (or a ``DataError``; ``on_missing='skip'``
    drops records without their image)."""
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: MeCoVQA grounding JSON not found") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read MeCoVQA JSON ({exc})") from exc
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a list of records")
    records: list[_Record] = []
    for idx, item in enumerate(_progress(items, f"MeCoVQA {path.name}")):
        where = f"{path}[{idx}]"
        if "image" not in item:
            raise DataError(f"{where}: missing field 'image'")
        question, box, mask = _record_question_and_box(item, where)
        img = img_root / str(item["image"])
        if not img.is_file():
            if on_missing == "skip":
                continue
            raise DataError(f"{where}: image file {img} not found (field 'image')")
        png, h, w = _png_from_file(img)
        records.append(_Record(idx, item, box, img, png, h, w, question, mask))
    return records


def _file_box_format(records: list[_Record], box_format: str, path: Path) -> str:
    """``box_format``, or with ``auto`` the convention detected over all boxes of the file (logged)."""
    if box_format != "auto":
        return box_format
    boxes = [r.box for r in records if r.box is not None]
    sizes = [(r.height, r.width) for r in records if r.box is not None]
    fmt = detect_box_format(boxes, sizes) if boxes else ""
    if boxes:
        log.info("%s: detected box convention %s", path, fmt)
    return fmt


def _target(rec: _Record, fmt: str, img_root: Path, where: str) -> tuple[list[int], bytes | None]:
    """(inclusive pixel box, mask PNG or None) of a record: its box in ``fmt``, or its mask's box."""
    if rec.box is not None:
        return normalise_box(rec.box, fmt, rec.width, rec.height, where=where), None
    mpath = img_root / str(rec.mask)
    marr = read_image(mpath) if mpath.is_file() else _missing(mpath, where)
    if marr.ndim == 3:
        marr = marr.max(axis=2)
    if marr.shape != (rec.height, rec.width):
        raise DataError(
            f"{where}: mask {mpath} is {marr.shape[1]}x{marr.shape[0]}, the image {rec.width}x{rec.height}"
        )
    pix = box_from_mask(marr)
    if pix is None:
        raise DataError(f"{where}: mask {mpath} is empty")
    return pix, encode_png(np.where(marr > 0, 255, 0).astype(np.uint8))


def _missing(path: Path, where: str) -> np.ndarray:
    raise DataError(f"{where}: mask file {path} not found")


_SAMED2D_PREFIX = re.compile(r"^(ct|mr|mri|pet|x_ray|xray|ultrasound|endoscopy|dermoscopy|fundus)_", re.I)


def _mecovqa_modality(item: Mapping[str, Any], img: Path, default: str | None,
                      extra: Mapping[str, str] | None, where: str) -> str:
    if item.get("modality"):
        return map_modality(str(item["modality"]), extra=extra, where=f"{where}.modality")
    m = _SAMED2D_PREFIX.match(img.name)
    if m:
        return map_modality(m.group(1), extra=extra, where=f"{where}.image")
    if default is not None:
        return default
    raise DataError(
        f"{where}: no modality (no 'modality' field, no SA-Med2D prefix); set the dataset's `modality`"
    )


@register("mecovqa", tasks=("grounding",))
def _mecovqa_from_config(name: str, spec: Mapping[str, Any], task: str, ctx: BuildContext) -> pd.DataFrame:
    """MeCoVQA grounding: boxes (any ``box_format``) or masks of MedPLIB's grounding files."""
    assert ctx.root is not None
    return read_mecovqa(ctx.root, dataset=name, files=spec.get("files"),
                        box_format=spec["box_format"], modality=spec.get("modality"),
                        modality_map=spec.get("modality_map"), on_missing=spec["on_missing"],
                        images_dir=spec.get("images_dir"))
