"""The sample-table contract shared by every VLM dataset reader: columns and Arrow schema, reading and
writing, modality labels, and small helpers (progress bars, images, boxes as text)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medfm_robust.errors import ConfigError, DataError
from medfm_robust.io import encode_png, read_image, read_parquet_checked, write_parquet_atomic
from medfm_robust.perturb.registry import MODALITIES

log = logging.getLogger(__name__)

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
    df = read_parquet_checked(path, SAMPLE_COLUMNS, kind="VLM sample table")
    df["options"] = [list(o) if o is not None else [] for o in df["options"]]
    df["box"] = [None if b is None else [int(v) for v in b] for b in df["box"]]
    df["mask_png"] = [m if isinstance(m, bytes | bytearray) else None for m in df["mask_png"]]
    return df



CAPTION_QUESTION = "Describe this medical image in one sentence."
