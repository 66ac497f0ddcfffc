"""ROCOv2 (radiology image captions), Zenodo CSV layout or the Hugging Face Parquet layout."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medfm_robust.errors import ConfigError, DataError
from medfm_robust.io import decode_png, encode_png
from medfm_robust.perturb.registry import MODALITIES
from medfm_robust.vlm.datasets.common import CAPTION_QUESTION, _png_from_file, _progress, to_frame
from medfm_robust.vlm.datasets.registry import BuildContext, register

log = logging.getLogger(__name__)

# UMLS CUIs of ROCOv2's manually curated modality concepts.
ROCO_MODALITY_CUIS = {
    "C0040405": "ct",  # X-Ray Computed Tomography
    "C0024485": "mri",  # Magnetic Resonance Imaging
    "C1306645": "xray",  # Plain x-ray
    "C0041618": "ultrasound",  # Ultrasonography
    "C0002978": "angiography",  # angiogram
}
IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg")  # tried in this order
ROCO_SPLITS = {"train": "train", "val": "valid", "valid": "valid", "validation": "valid", "test": "test"}


def read_rocov2(
    root: str | Path,
    *,
    dataset: str = "rocov2",
    split: str = "test",
    modality: str | None = None,
    modality_map: Mapping[str, str] | None = None,
    on_missing: str = "fail",
) -> pd.DataFrame:
    """Read ROCOv2 (Zenodo layout) as a caption sample table.

    Layout (Zenodo): ``root/{split}_captions.csv`` with columns ``ID`` and ``Caption``, images
    ``root/{split}/{ID}.jpg`` (``.png`` also accepted), optional ``root/{split}_concepts_manual.csv`` or
    ``{split}_concepts.csv`` with columns ``ID`` and ``CUIs`` (``;``-separated UMLS CUIs) giving the
    modality through :data:`ROCO_MODALITY_CUIS` (extended by ``modality_map``: CUI -> modality). Without a
    concept file every image gets ``modality`` (which must then be set). ``split`` is ``train``,
    ``valid``/``val`` or ``test``; the table's ``split`` is ``train``/``val``/``test``. Without the CSV,
    the Hugging Face layout ``root/data/{train,validation,test}-*.parquet`` (``image``, ``image_id``,
    ``caption``, ``cui``) is read instead.
    """
    root = Path(root)
    if split not in ROCO_SPLITS:
        raise ConfigError(f"ROCOv2 split '{split}' is not one of {sorted(ROCO_SPLITS)}")
    pub = ROCO_SPLITS[split]
    ours = {"train": "train", "valid": "val", "test": "test"}[pub]
    cap_file = root / f"{pub}_captions.csv"
    cui_modality = _cui_table(modality_map, modality)
    if not cap_file.is_file():
        hf_split = {"train": "train", "valid": "validation", "test": "test"}[pub]
        hf_files = sorted((root / "data").glob(f"{hf_split}-*.parquet"))
        if hf_files:
            return _read_rocov2_hf(hf_files, dataset=dataset, split=ours, root=root,
                                   cui_modality=cui_modality, modality=modality)
        raise DataError(f"{cap_file}: ROCOv2 captions CSV not found (nor the Hugging Face layout "
                        f"{root / 'data' / (hf_split + '-*.parquet')})")
    captions = _read_csv(cap_file, ("ID", "Caption"))
    concept_modality = _concept_modalities(root, pub, cui_modality, modality)
    rows: list[dict[str, Any]] = []
    skipped = 0
    for row in _progress(captions, "ROCOv2"):
        image_id = row["ID"].strip()
        where = f"{cap_file}:{image_id}"
        img = next((p for p in (root / pub / f"{image_id}{e}" for e in IMAGE_EXTENSIONS) if p.is_file()),
                   None)
        if img is None:
            if on_missing == "skip":
                skipped += 1
                continue
            raise DataError(f"{where}: image {root / pub / (image_id + '.jpg')} not found")
        mod = concept_modality.get(image_id, modality)
        if mod is None or "|" in mod:
            raise DataError(f"{where}: no modality concept for this image (set the dataset's `modality`)"
                            if mod is None else f"{where}: conflicting modality concepts {mod.split('|')}")
        rows.append(_caption_row(image_id, row["Caption"], where, dataset=dataset, modality=mod, split=ours,
                                 image=_png_from_file(img), source=str(img.relative_to(root))))
    if skipped:
        log.warning("%s: skipped %d ROCOv2 captions whose image is missing", root, skipped)
    if not rows:
        raise DataError(f"{cap_file}: no usable ROCOv2 captions")
    return to_frame(rows)


def _cui_table(modality_map: Mapping[str, str] | None, modality: str | None) -> dict[str, str]:
    """:data:`ROCO_MODALITY_CUIS` extended by ``modality_map`` (CUI -> modality); checks ``modality``."""
    cui_modality = dict(ROCO_MODALITY_CUIS)
    for key, value in (modality_map or {}).items():
        if value not in MODALITIES:
            raise ConfigError(f"modality_map: '{key}' maps to unknown modality '{value}'")
        cui_modality[key] = value
    if modality is not None and modality not in MODALITIES:
        raise ConfigError(f"ROCOv2 modality '{modality}' is not one of {MODALITIES}")
    return cui_modality


def _concept_modalities(root: Path, pub: str, cui_modality: Mapping[str, str],
                        modality: str | None) -> dict[str, str]:
    """Image ID -> modality from the split's concept CSV (conflicting concepts joined by ``|``); without a
    concept file, ``modality`` must be set (every image gets it)."""
    concept_modality: dict[str, str] = {}
    concept_file = next((f for f in (root / f"{pub}_concepts_manual.csv", root / f"{pub}_concepts.csv")
                         if f.is_file()), None)
    if concept_file is not None:
        for row in _read_csv(concept_file, ("ID", "CUIs")):
            cuis = [c.strip() for c in row["CUIs"].split(";")]
            found = sorted({cui_modality[c] for c in cuis if c in cui_modality})
            if len(found) == 1:
                concept_modality[row["ID"]] = found[0]
            elif len(found) > 1:
                concept_modality[row["ID"]] = "|".join(found)
    elif modality is None:
        raise ConfigError(
            f"{root}: no {pub}_concepts_manual.csv / {pub}_concepts.csv to derive modalities; set the "
            "dataset's `modality`"
        )
    return concept_modality


def _caption_row(image_id: str, caption: str, where: str, *, dataset: str, modality: str, split: str,
                 image: tuple[bytes, int, int], source: str) -> dict[str, Any]:
    """One caption sample (whitespace of ``caption`` collapsed; an empty caption raises ``DataError``)."""
    caption = " ".join(caption.split())
    if not caption:
        raise DataError(f"{where}: empty caption")
    png, h, w = image
    return {
        "sample_id": image_id, "dataset": dataset, "task": "caption", "modality": modality, "split": split,
        "image_id": image_id, "image_png": png, "height": h, "width": w,
        "question": CAPTION_QUESTION, "question_type": "caption", "options": [], "answer": caption,
        "reference": caption, "box": None, "source": source, "mask_png": None, "canonical_id": "",
    }


def _read_rocov2_hf(files: Sequence[Path], *, dataset: str, split: str, root: Path,
                    cui_modality: Mapping[str, str], modality: str | None) -> pd.DataFrame:
    """ROCOv2 in the Hugging Face layout: ``data/{split}-*.parquet`` with ``image`` (``{"bytes": ...}``),
    ``image_id``, ``caption`` and ``cui`` (list of UMLS CUIs)."""
    rows: list[dict[str, Any]] = []
    for f in files:
        t = pd.read_parquet(f)
        missing = [c for c in ("image", "image_id", "caption") if c not in t.columns]
        if missing:
            raise DataError(f"{f}: missing column(s) {missing} (found {list(t.columns)})")
        for rec in _progress(t.to_dict("records"), f"ROCOv2 {f.name}"):
            image_id = str(rec["image_id"])
            where = f"{f}:{image_id}"
            cuis = [str(c) for c in (rec.get("cui") if rec.get("cui") is not None else [])]
            found = sorted({cui_modality[c] for c in cuis if c in cui_modality})
            if len(found) > 1:
                raise DataError(f"{where}: conflicting modality concepts {found}")
            mod = found[0] if found else modality
            if mod is None:
                raise DataError(f"{where}: no modality concept for this image (set the dataset's `modality`)")
            img = rec["image"]
            data = img.get("bytes") if isinstance(img, Mapping) else img
            if not data:
                raise DataError(f"{where}: no image bytes")
            arr = decode_png(bytes(data), source=where)
            image = (encode_png(arr), arr.shape[0], arr.shape[1])
            rows.append(_caption_row(image_id, str(rec["caption"] or ""), where, dataset=dataset,
                                     modality=mod, split=split, image=image,
                                     source=f"{f.relative_to(root)}#{image_id}"))
    if not rows:
        raise DataError(f"{root}: no usable ROCOv2 captions in {[str(f) for f in files]}")
    return to_frame(rows)


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing} (found {header})")
            return [{k.strip(): (v or "") for k, v in r.items() if k is not None} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from exc


@register("rocov2", tasks=("caption",))
def _rocov2_from_config(name: str, spec: Mapping[str, Any], task: str, ctx: BuildContext) -> pd.DataFrame:
    """ROCOv2: radiology image captions (``split``: the publisher split read)."""
    assert ctx.root is not None
    return read_rocov2(ctx.root, dataset=name, split=spec["split"], modality=spec.get("modality"),
                       modality_map=spec.get("modality_map"), on_missing=spec["on_missing"])
