"""VLM sample tables: publisher-layout readers (OmniMedVQA, ROCOv2, MeCoVQA grounding), the demo builder
and deterministic modality-stratified sampling.

Sample table (``results/vlm/data/{dataset}/{task}.parquet``), one row per sample, sorted by ``sample_id``:

=============== ================= ===========================================================================
column          type              meaning
=============== ================= ===========================================================================
``sample_id``   str               unique within (dataset, task)
``dataset``     str               VLM dataset name (config key under ``vlm.datasets``)
``task``        str               ``vqa``, ``caption`` or ``grounding``
``modality``    str               one of :data:`MODALITIES`
``split``       str               ``train``, ``val`` or ``test`` (only ``test`` is perturbed and evaluated)
``image_id``    str               identity of the image (several VQA questions may share one image)
``image_png``   binary            the image, lossless PNG (uint8/uint16, grayscale or RGB)
``height``      int32             image height in pixels
``width``       int32             image width in pixels
``question``    str               the question / instruction (without answer-format instructions)
``question_type`` str             e.g. ``modality``, ``organ``, ``side``, ``size`` (demo), the publisher's
                                  type (OmniMedVQA) or the task name
``options``     list<str>         VQA options in letter order A, B, C, D (empty for other tasks)
``answer``      str               VQA: the correct letter; caption: the reference caption; grounding: the
                                  box as text ``[x0, y0, x1, y1]`` (pixels, inclusive)
``reference``   str               VQA: the correct option text; caption: reference caption; grounding: as
                                  ``answer``
``box``         list<int32>[4]    grounding target ``[x_min, y_min, x_max, y_max]`` in pixels of the stored
                                  image, **inclusive** max (the project's box convention); null otherwise
``source``      str               provenance (file path / record id in the publisher's files)
``mask_png``    binary or null    target mask (PNG, {0, 255}) when known (demo and mask-based grounding);
                                  label-moving perturbations move it and the box is recomputed from it
``canonical_id`` str              ``{dataset}/{image_id}`` when the image is a canonical-shard image (demo):
                                  its perturbed versions come from ``results/perturbed/{dataset}/*.parquet``;
                                  ``""`` otherwise
=============== ================= ===========================================================================
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfm_robust.errors import ConfigError, DataError
from medfm_robust.io import decode_png, encode_png, read_image, write_parquet_atomic
from medfm_robust.seeding import rng_for, seed_for

log = logging.getLogger(__name__)

TASKS = ("vqa", "caption", "grounding")
MODALITIES = (
    "dermoscopy", "mri", "ct", "xray", "ultrasound", "endoscopy", "fundus", "oct", "pathology", "angiography",
)
LETTERS = "ABCDEFGH"
SAMPLE_COLUMNS = (
    "sample_id", "dataset", "task", "modality", "split", "image_id", "image_png", "height", "width",
    "question", "question_type", "options", "answer", "reference", "box", "source", "mask_png",
    "canonical_id",
)

# Publisher modality labels -> our modalities. Keys are the label with everything but letters removed and
# lower-cased, taken from the text before the first "(" (OmniMedVQA writes "CT(Computed Tomography)",
# "MR (Mag-netic Resonance Imaging)", "OCT (Optical Coherence Tomography" ...) and, failing that, the
# whole label. Exact keys only: an unknown label is an error, never a silent default.
MODALITY_ALIASES: dict[str, str] = {
    **{m: m for m in MODALITIES},
    "computedtomography": "ct", "cect": "ct", "cta": "ct",
    "mr": "mri", "magneticresonanceimaging": "mri", "magneticresonance": "mri", "mrimaging": "mri",
    "xray": "xray", "radiography": "xray", "radiograph": "xray", "cxr": "xray", "chestxray": "xray",
    "us": "ultrasound", "ultrasonography": "ultrasound", "sonography": "ultrasound",
    "dermatoscopy": "dermoscopy", "dermoscopic": "dermoscopy",
    "colonoscopy": "endoscopy", "gastroscopy": "endoscopy",
    "fundusphotography": "fundus", "colorfundusphotography": "fundus", "retinalfundus": "fundus",
    "opticalcoherencetomography": "oct",
    "microscopyimages": "pathology", "microscopy": "pathology", "histopathology": "pathology",
    "histology": "pathology", "wholeslideimage": "pathology",
    "dsa": "angiography", "digitalsubtractionangiography": "angiography", "angiogram": "angiography",
}

MODALITY_NAMES: dict[str, str] = {
    "dermoscopy": "Dermoscopy", "mri": "MRI", "ct": "CT", "xray": "X-ray", "ultrasound": "Ultrasound",
    "endoscopy": "Endoscopy", "fundus": "Fundus photography", "oct": "OCT", "pathology": "Pathology",
    "angiography": "Angiography",
}


def _letters_only(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def map_modality(label: str, *, extra: Mapping[str, str] | None = None, where: str = "") -> str:
    """Map a publisher's modality label (e.g. ``"MR (Mag-netic Resonance Imaging)"``) to our modality.

    ``extra`` maps additional labels (matched the same way) and wins over the built-in table.
    Raises ``DataError`` naming ``where`` for an unknown label.
    """
    table = dict(MODALITY_ALIASES)
    for key, value in (extra or {}).items():
        if value not in MODALITIES:
            raise ConfigError(f"modality_map: '{key}' maps to unknown modality '{value}'")
        table[_letters_only(key)] = value
    raw = str(label)
    for candidate in (raw.split("(")[0], raw):
        key = _letters_only(candidate)
        if key in table:
            return table[key]
    raise DataError(
        f"{where or '<input>'}: unknown modality label {raw!r}; add it to the dataset's `modality_map` "
        f"(one of {', '.join(MODALITIES)})"
    )


# --------------------------------------------------------------------------------------------- helpers


def _progress(items: Sequence[Any], desc: str) -> Any:
    """A tqdm bar over ``items`` (updates at most every 2 s; quiet for short lists)."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="rec", mininterval=2, disable=len(items) < 1000, leave=False)


def _png_from_file(path: Path) -> tuple[bytes, int, int]:
    arr = read_image(path)
    return encode_png(arr), int(arr.shape[0]), int(arr.shape[1])


def box_text(box: Sequence[float]) -> str:
    """``[x0, y0, x1, y1]`` with integers where the values are integral."""
    vals = [int(v) if float(v).is_integer() else round(float(v), 4) for v in box]
    return "[" + ", ".join(str(v) for v in vals) + "]"


def box_from_mask(mask: np.ndarray) -> list[int] | None:
    """Inclusive pixel box ``[x_min, y_min, x_max, y_max]`` of ``mask > 0`` (``H x W``), None if empty."""
    ys, xs = np.nonzero(np.asarray(mask) > 0)
    if ys.size == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> a sample table with the contract's columns, dtypes and order (sorted by ``sample_id``)."""
    df = pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))
    if df["sample_id"].duplicated().any():
        dup = df.loc[df["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise DataError(f"duplicate sample id {dup!r} in dataset {df['dataset'].iloc[0]!r}")
    for col in ("height", "width"):
        df[col] = df[col].astype("int32")
    df["options"] = [list(o) if o is not None else [] for o in df["options"]]
    df["box"] = [None if b is None else [int(v) for v in b] for b in df["box"]]
    df["mask_png"] = [m if isinstance(m, bytes | bytearray) else None for m in df["mask_png"]]
    df["canonical_id"] = [c if isinstance(c, str) else "" for c in df["canonical_id"]]
    return df.sort_values("sample_id", kind="stable").reset_index(drop=True)


def sample_schema() -> Any:
    """The pyarrow schema of a sample table."""
    import pyarrow as pa

    return pa.schema([
        ("sample_id", pa.string()), ("dataset", pa.string()), ("task", pa.string()),
        ("modality", pa.string()), ("split", pa.string()), ("image_id", pa.string()),
        ("image_png", pa.binary()), ("height", pa.int32()), ("width", pa.int32()),
        ("question", pa.string()), ("question_type", pa.string()), ("options", pa.list_(pa.string())),
        ("answer", pa.string()), ("reference", pa.string()), ("box", pa.list_(pa.int32(), 4)),
        ("source", pa.string()), ("mask_png", pa.binary()), ("canonical_id", pa.string()),
    ])


def write_samples(path: str | Path, df: pd.DataFrame) -> None:
    """Write a sample table atomically with the contract's Arrow schema."""
    import pyarrow as pa

    table = pa.Table.from_pandas(df[list(SAMPLE_COLUMNS)], schema=sample_schema(), preserve_index=False)
    write_parquet_atomic(path, table)


def read_samples(path: str | Path) -> pd.DataFrame:
    """Read a sample table; ``options`` come back as Python lists, ``box`` as list of int or None."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: sample table not found")
    df = pd.read_parquet(p)
    missing = [c for c in SAMPLE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{p}: not a VLM sample table (missing columns {missing})")
    df["options"] = [list(o) if o is not None else [] for o in df["options"]]
    df["box"] = [None if b is None else [int(v) for v in b] for b in df["box"]]
    df["mask_png"] = [m if isinstance(m, bytes | bytearray) else None for m in df["mask_png"]]
    return df


# ----------------------------------------------------------------------------------------- OmniMedVQA


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
    files: list[Path] = []
    for sub in access:
        folder = root / "QA_information" / sub
        if not folder.is_dir():
            raise DataError(f"{folder}: OmniMedVQA QA folder not found")
        files.extend(sorted(folder.glob("*.json")))
    if not files:
        raise DataError(f"{root}: no OmniMedVQA QA JSON files under QA_information/{list(access)}")
    rows: list[dict[str, Any]] = []
    image_cache: dict[Path, tuple[bytes, int, int]] = {}
    skipped = 0
    for file in files:
        try:
            items = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{file}: cannot read OmniMedVQA JSON ({exc})") from exc
        if not isinstance(items, list):
            raise DataError(f"{file}: expected a list of QA items")
        for idx, item in enumerate(_progress(items, f"OmniMedVQA {file.name}")):
            where = f"{file}[{idx}]"
            if "modality_type" not in item and "modality" in item:
                # One published item (Chest CT Scan.json) spells the field `modality`.
                log.info("%s: field 'modality' read as 'modality_type'", where)
                item = {**item, "modality_type": item["modality"]}
            for key in ("question", "gt_answer", "modality_type", "image_path", "option_A", "option_B"):
                if key not in item:
                    raise DataError(f"{where}: missing field '{key}'")
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
                raise DataError(
                    f"{where}: gt_answer {answer_text!r} is not exactly one of the options {options}"
                )
            rel = str(item["image_path"]).replace("${dataset_root_path}/", "").lstrip("/")
            img_path = root / rel
            if not img_path.is_file():
                if on_missing == "skip":
                    skipped += 1
                    continue
                raise DataError(f"{where}: image file {img_path} not found (field 'image_path')")
            if img_path not in image_cache:
                image_cache[img_path] = _png_from_file(img_path)
            png, h, w = image_cache[img_path]
            qid = str(item.get("question_id", f"{file.stem}_{idx}"))
            modality = map_modality(item["modality_type"], extra=modality_map, where=f"{where}.modality_type")
            rows.append({
                "sample_id": qid, "dataset": dataset, "task": "vqa", "modality": modality, "split": "test",
                "image_id": rel, "image_png": png, "height": h, "width": w,
                "question": str(item["question"]).strip(),
                "question_type": str(item.get("question_type", "")),
                "options": options, "answer": LETTERS[matches[0]], "reference": options[matches[0]],
                "box": None, "source": f"{file.relative_to(root)}#{qid}",
            })
    if skipped:
        log.warning("%s: skipped %d OmniMedVQA items whose image is missing", root, skipped)
    if not rows:
        raise DataError(f"{root}: no usable OmniMedVQA items")
    return to_frame(rows)


# ---------------------------------------------------------------------------------------------- ROCOv2

# UMLS CUIs of ROCOv2's manually curated modality concepts.
ROCO_MODALITY_CUIS = {
    "C0040405": "ct",  # X-Ray Computed Tomography
    "C0024485": "mri",  # Magnetic Resonance Imaging
    "C1306645": "xray",  # Plain x-ray
    "C0041618": "ultrasound",  # Ultrasonography
    "C0002978": "angiography",  # angiogram
}
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
    cui_modality = dict(ROCO_MODALITY_CUIS)
    for key, value in (modality_map or {}).items():
        if value not in MODALITIES:
            raise ConfigError(f"modality_map: '{key}' maps to unknown modality '{value}'")
        cui_modality[key] = value
    if modality is not None and modality not in MODALITIES:
        raise ConfigError(f"ROCOv2 modality '{modality}' is not one of {MODALITIES}")
    if not cap_file.is_file():
        hf_split = {"train": "train", "valid": "validation", "test": "test"}[pub]
        hf_files = sorted((root / "data").glob(f"{hf_split}-*.parquet"))
        if hf_files:
            return _read_rocov2_hf(hf_files, dataset=dataset, split=ours, root=root,
                                   cui_modality=cui_modality, modality=modality)
        raise DataError(f"{cap_file}: ROCOv2 captions CSV not found (nor the Hugging Face layout "
                        f"{root / 'data' / (hf_split + '-*.parquet')})")
    captions = _read_csv(cap_file, ("ID", "Caption"))
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
    rows: list[dict[str, Any]] = []
    skipped = 0
    for row in _progress(captions, "ROCOv2"):
        image_id = row["ID"].strip()
        where = f"{cap_file}:{image_id}"
        img = next((p for p in (root / pub / f"{image_id}{ext}" for ext in (".jpg", ".png", ".jpeg"))
                    if p.is_file()), None)
        if img is None:
            if on_missing == "skip":
                skipped += 1
                continue
            raise DataError(f"{where}: image {root / pub / (image_id + '.jpg')} not found")
        mod = concept_modality.get(image_id, modality)
        if mod is None:
            raise DataError(f"{where}: no modality concept for this image (set the dataset's `modality`)")
        if "|" in mod:
            raise DataError(f"{where}: conflicting modality concepts {mod.split('|')}")
        caption = " ".join(row["Caption"].split())
        if not caption:
            raise DataError(f"{where}: empty caption")
        png, h, w = _png_from_file(img)
        rows.append({
            "sample_id": image_id, "dataset": dataset, "task": "caption", "modality": mod, "split": ours,
            "image_id": image_id, "image_png": png, "height": h, "width": w,
            "question": CAPTION_QUESTION, "question_type": "caption", "options": [], "answer": caption,
            "reference": caption, "box": None, "source": str(img.relative_to(root)),
        })
    if skipped:
        log.warning("%s: skipped %d ROCOv2 captions whose image is missing", root, skipped)
    if not rows:
        raise DataError(f"{cap_file}: no usable ROCOv2 captions")
    return to_frame(rows)


def _read_rocov2_hf(files: Sequence[Path], *, dataset: str, split: str, root: Path,
                    cui_modality: Mapping[str, str], modality: str | None) -> pd.DataFrame:
    """ROCOv2 in the Hugging Face layout: ``data/{split}-*.parquet`` with ``image`` (``{"bytes": ...}``),
    ``image_id``, ``caption`` and ``cui`` (list of UMLS CUIs)."""
    from medfm_robust.io import decode_png

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
            caption = " ".join(str(rec["caption"] or "").split())
            if not caption:
                raise DataError(f"{where}: empty caption")
            rows.append({
                "sample_id": image_id, "dataset": dataset, "task": "caption", "modality": mod, "split": split,
                "image_id": image_id, "image_png": encode_png(arr), "height": arr.shape[0],
                "width": arr.shape[1],
                "question": CAPTION_QUESTION, "question_type": "caption", "options": [], "answer": caption,
                "reference": caption, "box": None, "source": f"{f.relative_to(root)}#{image_id}",
                "mask_png": None, "canonical_id": "",
            })
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


# ---------------------------------------------------------------------------------------------- MeCoVQA

BOX_FORMATS = ("auto", "xyxy_pixel", "xyxy_norm1", "xyxy_norm1000", "xywh_pixel")


def normalise_box(box: Sequence[float], fmt: str, width: int, height: int, *, where: str) -> list[int]:
    """Convert a box in ``fmt`` to the project convention: inclusive pixel ``[x0, y0, x1, y1]``.

    ``xyxy_pixel``: pixel corner indices, inclusive; ``xyxy_norm1``: edges as fractions of width/height;
    ``xyxy_norm1000``: edges on a 0-1000 scale; ``xywh_pixel``: top-left pixel plus width/height in pixels.
    Normalised edges map to pixels by ``x0 = floor(x0n * W)``, ``x1 = ceil(x1n * W) - 1``. The result is
    clamped to the image; a degenerate or reversed box raises ``DataError`` naming ``where``.
    """
    vals = [float(v) for v in box]
    if len(vals) != 4 or not all(np.isfinite(vals)):
        raise DataError(f"{where}: box must be 4 finite numbers, got {list(box)}")
    x0, y0, a, b = vals
    if fmt == "xyxy_pixel":
        x1, y1 = a, b
    elif fmt == "xywh_pixel":
        x1, y1 = x0 + a - 1, y0 + b - 1
    elif fmt in ("xyxy_norm1", "xyxy_norm1000"):
        s = 1.0 if fmt == "xyxy_norm1" else 1000.0
        x0, x1 = np.floor(x0 / s * width), np.ceil(a / s * width) - 1
        y0, y1 = np.floor(y0 / s * height), np.ceil(b / s * height) - 1
    else:
        raise ConfigError(f"box_format '{fmt}' is not one of {BOX_FORMATS}")
    if x1 < x0 or y1 < y0:
        raise DataError(f"{where}: box {list(box)} ({fmt}) has max < min")
    out = [round(x0), round(y0), round(x1), round(y1)]
    out = [min(max(out[0], 0), width - 1), min(max(out[1], 0), height - 1),
           min(max(out[2], 0), width - 1), min(max(out[3], 0), height - 1)]
    return out


def detect_box_format(boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]]) -> str:
    """Guess a dataset's box convention from all its boxes (``sizes`` are ``(height, width)``).

    All coordinates within [0, 1] -> ``xyxy_norm1``; any coordinate beyond its image's width/height
    but all <= 1000 -> ``xyxy_norm1000``; otherwise ``xyxy_pixel``.
    """
    arr = np.asarray(boxes, dtype=float)
    if arr.size and arr.min() >= 0 and arr.max() <= 1.0:
        return "xyxy_norm1"
    beyond = any(max(b[0], b[2]) > w or max(b[1], b[3]) > h for b, (h, w) in zip(boxes, sizes, strict=True))
    if beyond and arr.max() <= 1000:
        return "xyxy_norm1000"
    return "xyxy_pixel"


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
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise DataError(f"{path}: MeCoVQA grounding JSON not found") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read MeCoVQA JSON ({exc})") from exc
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a list of records")
        parsed: list[tuple[int, dict[str, Any], Any, Path, bytes, int, int, str, str | None]] = []
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
            parsed.append((idx, item, box, img, png, h, w, question, mask))
        fmt = box_format
        if fmt == "auto":
            boxes = [p[2] for p in parsed if p[2] is not None]
            sizes = [(p[5], p[6]) for p in parsed if p[2] is not None]
            fmt = detect_box_format(boxes, sizes) if boxes else ""
            if boxes:
                log.info("%s: detected box convention %s", path, fmt)
        for idx, item, box, img, png, h, w, question, mask in parsed:
            where = f"{path}[{idx}]"
            mask_png = None
            if box is not None:
                pix = normalise_box(box, fmt, w, h, where=where)
            else:
                mpath = img_root / str(mask)
                marr = read_image(mpath) if mpath.is_file() else _missing(mpath, where)
                if marr.ndim == 3:
                    marr = marr.max(axis=2)
                if marr.shape != (h, w):
                    raise DataError(
                        f"{where}: mask {mpath} is {marr.shape[1]}x{marr.shape[0]}, the image {w}x{h}"
                    )
                pix = box_from_mask(marr)
                if pix is None:
                    raise DataError(f"{where}: mask {mpath} is empty")
                mask_png = encode_png(np.where(marr > 0, 255, 0).astype(np.uint8))
            mod = _mecovqa_modality(item, img, modality, modality_map, where)
            sid = str(item.get("id", f"{split}_{idx}"))
            rows.append({
                "sample_id": sid if split == "test" else f"{split}/{sid}", "dataset": dataset,
                "task": "grounding", "modality": mod, "split": split,
                "image_id": str(item["image"]), "image_png": png, "height": h, "width": w,
                "question": question, "question_type": "grounding", "options": [], "answer": box_text(pix),
                "reference": box_text(pix), "box": pix, "source": f"{files[split]}[{idx}]",
                "mask_png": mask_png, "canonical_id": "",
            })
    if not rows:
        raise DataError(f"{root}: no usable MeCoVQA grounding records")
    return to_frame(rows)


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


# -------------------------------------------------------------------------------------------- sampling


def stratified_sample(df: pd.DataFrame, n: int | None, *, key: Sequence[object], seed: int,
                      by: str = "modality") -> pd.DataFrame:
    """Deterministic sample of ``n`` rows stratified by ``by`` (proportional, largest remainder).

    Each row's rank is ``seed_for(*key, sample_id, global_seed=seed)``, so the draw depends only on the
    rows' identities (not on file order) and a smaller ``n`` gives a subset of a larger one's stratum
    picks. ``n=None`` or ``n >= len(df)`` keeps everything. Returns rows sorted by ``sample_id``.
    """
    if n is None or n >= len(df):
        return df.sort_values("sample_id", kind="stable").reset_index(drop=True)
    ranks = np.array([seed_for(*key, sid, global_seed=seed) for sid in df["sample_id"]], dtype=np.uint64)
    df = df.assign(_rank=ranks).sort_values(["_rank", "sample_id"], kind="stable")
    sizes = df.groupby(by, sort=True).size()
    quota = sizes / sizes.sum() * n
    alloc = np.floor(quota).astype(int)
    if n >= len(sizes):
        alloc = alloc.clip(lower=1)
    rest = n - int(alloc.sum())
    if rest > 0:
        order = sorted(sizes.index, key=lambda s: (-(quota[s] - np.floor(quota[s])), s))
        for s in order[:rest]:
            alloc[s] += 1
    while int(alloc.sum()) > n:  # clip(lower=1) can overshoot: take back from the largest strata
        alloc[alloc.idxmax()] -= 1
    parts = [g.head(int(min(alloc[s], len(g)))) for s, g in df.groupby(by, sort=True)]
    out = pd.concat(parts).drop(columns="_rank")
    return out.sort_values("sample_id", kind="stable").reset_index(drop=True)


def sample_splits(df: pd.DataFrame, sampling: Mapping[str, Any], *, dataset: str, task: str,
                  seed: int) -> pd.DataFrame:
    """Apply ``sampling`` (``n_test``, ``n_train``, ``n_val``, ``stratify_by``) to each split."""
    by = sampling.get("stratify_by", "modality")
    parts = []
    for split, g in df.groupby("split", sort=True):
        n = sampling.get(f"n_{split}")
        parts.append(stratified_sample(g, n, key=("vlm_sample", dataset, task, split), seed=seed, by=by))
    return pd.concat(parts).sort_values("sample_id", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ demo

CAPTION_QUESTION = "Describe this medical image in one sentence."
SIDES = ("left", "right", "center")
SIZE_CLASSES = ("small", "medium", "large")
CAPTION_TEMPLATES = (
    "{Modality} image of the {organ} showing a {size} {finding} in the {position} part of the image.",
    "{Modality} of the {organ} with a {size} {finding} located {position_phrase}.",
    "{Modality} image of the {organ}: a {size} {finding} {position_phrase}.",
)


def _organ_vocab() -> tuple[str, ...]:
    from medfm_robust.data.demo import ORGAN_BY_MODALITY

    return tuple(sorted({*ORGAN_BY_MODALITY.values(), "head", "brain"}))


def demo_organ_finding(
    source: str, modality: str, organs: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """(organ, target name) of canonical dataset ``source`` for the demo templates.

    ``organs`` (config ``vlm.datasets.<name>.organs``) wins; MNI152 sources show the brain (mask: brain),
    Shepp-Logan phantoms a head (mask: a phantom structure); otherwise
    :data:`medfm_robust.data.demo.ORGAN_BY_MODALITY` / ``FINDING_BY_MODALITY``.
    """
    from medfm_robust.data.demo import FINDING_BY_MODALITY, ORGAN_BY_MODALITY

    low = source.lower()
    if "mni" in low:
        organ, finding = "brain", "brain tissue"
    elif "shepp" in low:
        organ, finding = "head", "highlighted structure"
    elif modality in ORGAN_BY_MODALITY:
        organ, finding = ORGAN_BY_MODALITY[modality], FINDING_BY_MODALITY[modality]
    else:
        raise DataError(f"{source}: no demo organ for modality '{modality}'")
    if organs and source in organs:
        organ = organs[source]
    return organ, finding


def _position(facts: Mapping[str, Any]) -> tuple[str, str]:
    """(``upper left``-style position, phrase such as ``in the upper left``/``in the centre``)."""
    parts = [p for p in (facts["vertical"], facts["side"]) if p not in ("middle", "center")]
    pos = " ".join(parts) if parts else "central"
    return pos, (f"in the {pos} part" if parts else "in the centre")


def _mc(correct: str, vocab: Sequence[str], rng: np.random.Generator, n: int = 4) -> tuple[list[str], str]:
    """Options (correct + up to ``n - 1`` distinct distractors from ``vocab``, shuffled), correct letter."""
    distractors = [v for v in dict.fromkeys(vocab) if v != correct]
    picks = rng.choice(len(distractors), size=min(n - 1, len(distractors)), replace=False)
    options = [correct] + [distractors[int(i)] for i in picks]
    options = [options[int(i)] for i in rng.permutation(len(options))]
    return options, LETTERS[options.index(correct)]


def demo_rows_for_image(
    rec: Mapping[str, Any], *, dataset: str, tasks: Iterable[str], seed: int,
    organs: Mapping[str, str] | None = None, canonical: bool = True,
) -> list[dict[str, Any]]:
    """VQA (modality, organ, side, size), caption and grounding samples for one image record.

    ``rec`` is a canonical-shard row (``image_id``, ``dataset``, ``modality``, ``split``, ``image_png``,
    ``mask_png``, ``height``, ``width``) or a showcase record (``mask_png`` None, ``canonical=False``).
    Mask facts come from :func:`medfm_robust.data.demo.describe_mask`. Without a mask (or an empty one)
    only the modality (and, for canonical images, organ) question and a lesion-free caption are made.
    Options, answer letters and caption templates are drawn from ``rng_for`` keyed by the image and question.
    """
    from medfm_robust.data.demo import describe_mask

    tasks = set(tasks)
    source = str(rec["dataset"])
    mask = decode_png(rec["mask_png"], source=f"{source}/{rec['image_id']}") if rec.get(
        "mask_png") is not None else None
    facts = describe_mask(mask) if mask is not None and (np.asarray(mask) > 0).any() else None
    modality = str(rec["modality"])
    organ, finding = demo_organ_finding(source, modality, organs) if canonical else ("", "")
    base_id = f"{source}/{rec['image_id']}"
    common = {
        "dataset": dataset, "modality": modality, "split": str(rec["split"]), "image_id": base_id,
        "image_png": rec["image_png"], "height": int(rec["height"]), "width": int(rec["width"]),
        "source": (f"results/data/{source}/{rec['split']}.parquet#{rec['image_id']}" if canonical
                   else str(rec.get("source", ""))),
        "mask_png": None, "canonical_id": base_id if canonical else "",
    }
    rows: list[dict[str, Any]] = []
    mname = MODALITY_NAMES[modality]
    if "vqa" in tasks:
        questions = [("modality", "Which imaging modality was used to acquire this image?", mname,
                      list(MODALITY_NAMES.values()))]
        if canonical:
            questions.append(
                ("organ", "Which organ or body region is shown in this image?", organ, _organ_vocab())
            )
        if facts is not None:
            questions += [
                ("side", f"On which side of the image is the {finding}?", facts["side"], SIDES),
                ("size", f"How large is the {finding} relative to the image?", facts["size_class"],
                 SIZE_CLASSES),
            ]
        for qtype, question, correct, vocab in questions:
            options, letter = _mc(correct, vocab, rng_for("vlm_demo_vqa", base_id, qtype, global_seed=seed))
            rows.append({**common, "sample_id": f"{base_id}#{qtype}", "task": "vqa", "question": question,
                         "question_type": qtype, "options": options, "answer": letter, "reference": correct,
                         "box": None})
    if "caption" in tasks:
        if facts is not None:
            pos, phrase = _position(facts)
            rng = rng_for("vlm_demo_caption", base_id, global_seed=seed)
            tmpl = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
            caption = tmpl.format(Modality=mname, modality=mname, organ=organ, size=facts["size_class"],
                                  finding=finding, position=pos, position_phrase=phrase)
        elif canonical:
            caption = f"{mname} image of the {organ}."
        else:
            caption = f"{mname} image."
        caption = caption[0].upper() + caption[1:]
        rows.append({**common, "sample_id": base_id, "task": "caption", "question": CAPTION_QUESTION,
                     "question_type": "caption", "options": [], "answer": caption, "reference": caption,
                     "box": None})
    if "grounding" in tasks and facts is not None:
        box = [int(v) for v in facts["box"]]
        rows.append({**common, "sample_id": base_id, "task": "grounding",
                     "question": f"Locate the {finding} in this {mname} image.", "question_type": "grounding",
                     "options": [], "answer": box_text(box), "reference": box_text(box), "box": box,
                     "mask_png": rec["mask_png"]})
    return rows


def showcase_records(max_size: int | None = 256) -> list[dict[str, Any]]:
    """The data stage's showcase images (real images without masks) as test-split image records.

    Images larger than ``max_size`` (longest side) are downsized with anti-aliasing, keeping the dtype.
    """
    from skimage.transform import resize

    from medfm_robust.data.demo import showcase_images

    recs = []
    for name, (modality, image) in sorted(showcase_images().items()):
        img = np.asarray(image)
        h, w = img.shape[:2]
        if max_size is not None and max(h, w) > max_size:
            scale = max_size / max(h, w)
            shape = (max(1, round(h * scale)), max(1, round(w * scale)), *img.shape[2:])
            img = np.clip(np.rint(resize(img.astype(np.float64), shape, order=1, anti_aliasing=True,
                                         preserve_range=True)), 0, np.iinfo(img.dtype).max).astype(img.dtype)
        recs.append({"image_id": name, "dataset": "showcase", "modality": modality, "split": "test",
                     "image_png": encode_png(img), "mask_png": None, "height": img.shape[0],
                     "width": img.shape[1], "source": f"medfm_robust.data.demo.showcase_images:{name}"})
    return recs


def build_demo(
    shards: Sequence[str | Path], *, dataset: str, task: str, seed: int,
    organs: Mapping[str, str] | None = None, showcase: bool = True, showcase_size: int | None = 256,
    perturb_max_images: int | None = None,
) -> pd.DataFrame:
    """A demo sample table for ``task`` from canonical shards ``results/data/{ds}/{split}.parquet``
    (splits follow the canonical splits) plus, with ``showcase``, the showcase images (test split).

    ``perturb_max_images`` (the perturbation stage's ``perturb.max_images``): keep only the canonical test
    images that stage perturbs (:func:`medfm_robust.perturb.table.select_images`, same seed), so every demo
    test image's perturbed versions already exist under ``results/perturbed/`` and are reused.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown VLM task '{task}' (one of {TASKS})")
    rows: list[dict[str, Any]] = []
    for shard in sorted(str(s) for s in shards):
        path = Path(shard)
        if not path.is_file():
            raise DataError(f"{path}: canonical shard not found")
        df = pd.read_parquet(path)
        for col in ("image_id", "dataset", "modality", "split", "image_png", "mask_png", "height", "width"):
            if col not in df.columns:
                raise DataError(f"{path}: canonical shard lacks column '{col}'")
        if perturb_max_images is not None and len(df) and set(df["split"]) == {"test"}:
            from medfm_robust.perturb.table import select_images

            df = select_images(df, perturb_max_images, global_seed=seed)
        for rec in df.to_dict("records"):
            rows.extend(demo_rows_for_image(rec, dataset=dataset, tasks=[task], seed=seed, organs=organs))
    if showcase:
        for rec in showcase_records(showcase_size):
            rows.extend(demo_rows_for_image(rec, dataset=dataset, tasks=[task], seed=seed, canonical=False))
    if not rows:
        raise DataError(f"no demo {task} samples could be built from {list(shards)}")
    return to_frame(rows)


# ------------------------------------------------------------------------------------------ top level

ADAPTERS = ("demo", "omnimedvqa", "rocov2", "mecovqa")
ADAPTER_TASK = {"omnimedvqa": "vqa", "rocov2": "caption", "mecovqa": "grounding"}


def dataset_tasks(spec: Mapping[str, Any]) -> list[str]:
    """The tasks a ``vlm.datasets`` entry provides."""
    adapter = spec["adapter"]
    if adapter == "demo":
        return list(spec.get("tasks", TASKS))
    return [ADAPTER_TASK[adapter]]


SHOWCASE_MODALITIES = ("ct", "fundus", "mri", "pathology")  # of medfm_robust.data.demo.showcase_images


def demo_sources(spec: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Canonical datasets feeding a demo VLM dataset: ``spec['sources']`` or every ``datasets`` key."""
    sources = list(spec.get("sources") or sorted(config.get("datasets", {})))
    unknown = [s for s in sources if s not in config.get("datasets", {})]
    if unknown:
        raise ConfigError(f"vlm.datasets.*.sources: {unknown} are not keys of `datasets`")
    return sources


def dataset_modalities(spec: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Modalities a VLM dataset can contain (this decides which perturbation files it gets).

    Demo: its source datasets' modalities plus the showcase ones. Real datasets: every modality, since
    their modalities are only known once the publisher's files are read (files of types whose modalities
    are absent are written empty)."""
    if spec.get("adapter") == "demo":
        mods = {config["datasets"][s]["modality"] for s in demo_sources(spec, config)
                if config["datasets"][s].get("modality")}
        if spec.get("showcase", True):
            mods.update(SHOWCASE_MODALITIES)
        return [m for m in MODALITIES if m in mods]
    return list(MODALITIES)


def build_sample_table(
    name: str, spec: Mapping[str, Any], task: str, *, sampling: Mapping[str, Any], seed: int,
    shards: Sequence[str | Path] = (), resources_dir: str | Path = ".", perturb_max_images: int | None = None,
) -> pd.DataFrame:
    """Read dataset ``name`` (a ``vlm.datasets`` entry) for ``task`` and apply ``sampling``.

    ``shards``: canonical shards (demo adapter); ``perturb_max_images``: see :func:`build_demo` (default:
    the demo spec's ``max_test_images``, which should equal ``perturb.max_images``).
    """
    adapter = spec.get("adapter")
    if adapter not in ADAPTERS:
        raise ConfigError(f"vlm.datasets.{name}.adapter: unknown adapter {adapter!r} (one of {ADAPTERS})")
    if task not in dataset_tasks(spec):
        raise ConfigError(f"vlm.datasets.{name}: adapter '{adapter}' does not provide task '{task}'")
    if adapter == "demo":
        df = build_demo(shards, dataset=name, task=task, seed=seed, organs=spec.get("organs"),
                        showcase=spec.get("showcase", True), showcase_size=spec.get("showcase_size", 256),
                        perturb_max_images=perturb_max_images if perturb_max_images is not None
                        else spec.get("max_test_images"))
    else:
        if not spec.get("path"):
            raise ConfigError(f"vlm.datasets.{name}.path: required for adapter '{adapter}'")
        root = Path(spec["path"])
        if not root.is_absolute() and not root.exists():
            root = Path(resources_dir) / root
        common = {"dataset": name, "modality_map": spec.get("modality_map"),
                  "on_missing": spec.get("on_missing", "fail")}
        if adapter == "omnimedvqa":
            df = read_omnimedvqa(root, access=spec.get("access", ["Open-access"]), **common)
        elif adapter == "rocov2":
            df = read_rocov2(root, split=spec.get("split", "test"), modality=spec.get("modality"), **common)
        else:
            df = read_mecovqa(root, files=spec.get("files"), box_format=spec.get("box_format", "auto"),
                              modality=spec.get("modality"), images_dir=spec.get("images_dir"), **common)
    return sample_splits(df, sampling, dataset=name, task=task, seed=seed)


def build_and_write(out: str | Path, name: str, spec: Mapping[str, Any], task: str, **kwargs: Any) -> None:
    """:func:`build_sample_table` then :func:`write_samples` to ``out`` (logs per-split/modality counts)."""
    df = build_sample_table(name, spec, task, **kwargs)
    counts = df.groupby(["split", "modality"]).size().to_dict()
    log.info("%s/%s: %d samples %s", name, task, len(df), counts)
    write_samples(out, df)
