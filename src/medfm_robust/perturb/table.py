"""Table level: canonical-shard rows -> perturbed-shard rows, image selection and calibration reports.

Row contracts are those of ``docs/ARCHITECTURE.md``. Rows need ``image_id``, ``dataset``, ``modality`` and
``image_png``; ``mask_png`` and ``box`` are optional (VLM samples may have neither, or only a box).
Label handling for label-moving types: a mask is moved with the image (nearest neighbour) and the box is
recomputed from the moved mask; a row with a box but no mask has its box moved as a *box mask* (the filled
rectangle is moved and the box of the result is taken; for rotations this box encloses the rotated
rectangle). A label moved entirely out of the image gives a null box.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from medfm_robust.boxes import box_from_mask
from medfm_robust.errors import DataError
from medfm_robust.intensity import check_value_range
from medfm_robust.io import decode_png, encode_png, write_json_atomic, write_parquet_atomic, write_text_atomic
from medfm_robust.perturb._common import Context
from medfm_robust.perturb.calibrate import CalibrationResult, calibrate_levels
from medfm_robust.perturb.registry import PerturbationSpec, get_spec
from medfm_robust.perturb.search import DEFAULT_MAX_EVALS, check_bands
from medfm_robust.seeding import seed_for, unit_hash

log = logging.getLogger(__name__)

PERTURBED_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("dataset", pa.string()),
        ("modality", pa.string()),
        ("perturbation", pa.string()),
        ("category", pa.string()),
        ("level", pa.int8()),
        ("image_png", pa.binary()),
        ("mask_png", pa.binary()),
        ("box", pa.list_(pa.int32())),
        ("ssim", pa.float64()),
        ("param", pa.float64()),
        ("in_band", pa.bool_()),
        ("reason", pa.string()),
        ("seed", pa.int64()),
        ("ssim_min_reachable", pa.float64()),
        ("ssim_max_reachable", pa.float64()),
    ]
)
REQUIRED = ("image_id", "dataset", "modality", "image_png")


def box_mask(box: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """Filled-rectangle ``H x W`` uint8 {0, 255} mask of an inclusive box (clipped to the image)."""
    h, w = shape
    x0, y0, x1, y1 = (int(v) for v in box)
    m = np.zeros((h, w), np.uint8)
    m[max(y0, 0) : min(y1, h - 1) + 1, max(x0, 0) : min(x1, w - 1) + 1] = 255
    return m


def perturbation_seed(dataset: str, image_id: str, name: str, global_seed: int) -> int:
    """The seed of one (dataset, image, type): the random layout shared by all its levels (nested levels:
    levels differ only in the severity parameter)."""
    return seed_for(dataset, image_id, name, global_seed=global_seed)


def reachable(band: Sequence[float], ssim_min: float, ssim_max: float) -> bool:
    """Whether a band ``[lo, hi]`` meets the certified reachable SSIM interval of its (image, type)."""
    return bool(ssim_min < band[1] and ssim_max >= band[0])


def row_value_range(row: Any, source: str) -> list[float] | None:
    """A canonical row's ``value_range`` ``[lo, hi]`` (stored values of black and white), or None."""
    vr = row.get("value_range")
    if vr is None or (isinstance(vr, float) and np.isnan(vr)):
        return None
    return list(check_value_range([float(v) for v in vr], f"{source} value_range"))


def select_images(df: pd.DataFrame, max_images: int | None, global_seed: int = 0) -> pd.DataFrame:
    """At most ``max_images`` rows chosen by a hash of (dataset, image id, seed): independent of row order.

    Returned sorted by ``image_id``.
    """
    if max_images is not None and len(df) > max_images:
        keys = [
            unit_hash("perturb-select", d, i, global_seed)
            for d, i in zip(df["dataset"], df["image_id"], strict=True)
        ]
        df = df.assign(_k=keys).sort_values(["_k", "image_id"]).head(max_images).drop(columns="_k")
    return df.sort_values("image_id", kind="mergesort").reset_index(drop=True)


def _labels(
    row: Any, shape: tuple[int, int], source: str
) -> tuple[np.ndarray | None, bool, list[int] | None]:
    """(mask to move, whether it is a real mask, original box) of one row."""
    box = row.get("box")
    box = None if box is None or (not isinstance(box, (list, tuple, np.ndarray))) else [int(v) for v in box]
    mpng = row.get("mask_png")
    if mpng is not None and not (isinstance(mpng, float) and np.isnan(mpng)) and len(mpng) > 0:
        m = decode_png(bytes(mpng), source=f"{source} mask_png")
        if m.ndim == 3:
            m = m[..., 0]
        if m.shape != shape:
            raise DataError(
                f"{source}: mask_png is {m.shape[1]}x{m.shape[0]} but image_png is {shape[1]}x{shape[0]}"
            )
        return np.where(m > 0, 255, 0).astype(np.uint8), True, box
    if box is not None:
        if len(box) != 4:
            raise DataError(f"{source}: box must have 4 values, got {box}")
        return box_mask(box, shape), False, box
    return None, False, None


def perturb_table(
    df: pd.DataFrame,
    name: str,
    *,
    levels: Iterable[int] = (1, 2, 3, 4, 5),
    global_seed: int = 0,
    bands: Sequence[Sequence[float]] | None = None,
    param_range: Sequence[float] | None = None,
    max_evals: int = DEFAULT_MAX_EVALS,
    progress: bool = True,
    options: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Calibrate perturbation ``name`` at every level for every row of a canonical shard (or VLM samples).

    Returns perturbed-shard rows (``PERTURBED_SCHEMA`` columns) sorted by (``image_id``, ``level``). The
    levels of an (image, type) share one random layout and one search (:func:`calibrate_levels`); its
    outputs depend only on that row, the type, the levels, the settings and ``global_seed``, and each is
    regenerated exactly by ``apply(image, name, row.param, seed=row.seed)``. A row's ``value_range``
    column (if present) gives the stored values of black and white (raw 16-bit images). ``options``: the
    type's registry options (e.g. ``{"space": "hsv"}`` for stain_variation).
    """
    from tqdm import tqdm

    spec = get_spec(name)
    settings = {"bands": check_bands(bands), "param_range": param_range, "max_evals": max_evals}
    levels = sorted({int(v) for v in levels})
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"input table lacks column(s) {', '.join(missing)}")
    rows: list[dict[str, Any]] = []
    records = df.sort_values("image_id", kind="mergesort").to_dict("records")
    for row in tqdm(records, desc=name, unit="img", disable=not progress, mininterval=2):
        rows.extend(_perturb_row(row, spec, levels, global_seed, settings, options))
    table = pa.Table.from_pylist(rows, schema=PERTURBED_SCHEMA)
    return table.to_pandas()


def encode_outputs(results: Sequence[CalibrationResult]) -> list[bytes]:
    """PNG bytes of each result's image, in order; levels that share a parameter (unreachable bands)
    share one output, which is encoded once."""
    pngs: dict[float, bytes] = {}
    for res in results:
        if res.param not in pngs:
            pngs[res.param] = encode_png(res.image)
    return [pngs[res.param] for res in results]


def _perturb_row(
    row: dict[str, Any],
    spec: PerturbationSpec,
    levels: list[int],
    global_seed: int,
    settings: dict[str, Any],
    options: Mapping[str, str] | None,
) -> list[dict[str, Any]]:
    """The perturbed-shard rows of one canonical row (one per level); ``settings``: the search's
    ``bands``, ``param_range`` and ``max_evals`` (see :func:`calibrate_levels`)."""
    source = f"{row['dataset']}/{row['image_id']}"
    image = decode_png(bytes(row["image_png"]), source=f"{source} image_png")
    ctx = Context(image, value_range=row_value_range(row, source))
    mask, real_mask, box = _labels(row, image.shape[:2], source)
    seed = perturbation_seed(row["dataset"], row["image_id"], spec.name, global_seed)
    results = calibrate_levels(ctx, spec.name, levels, seed=seed, mask=mask, options=options, **settings)
    out = []
    for res, png in zip(results, encode_outputs(results), strict=True):
        out_box, out_mask = box, None
        if spec.moves_labels and mask is not None:
            out_box = box_from_mask(res.mask)
            if real_mask:
                out_mask = encode_png(res.mask)
        out.append(
            {
                "image_id": str(row["image_id"]),
                "dataset": str(row["dataset"]),
                "modality": str(row["modality"]),
                "perturbation": spec.name,
                "category": spec.category,
                "level": res.level,
                "image_png": png,
                "mask_png": out_mask,
                "box": out_box,
                "ssim": res.ssim,
                "param": res.param,
                "in_band": res.in_band,
                "reason": res.reason,
                "seed": seed,
                "ssim_min_reachable": res.ssim_min_reachable,
                "ssim_max_reachable": res.ssim_max_reachable,
            }
        )
    return out


def write_perturbed_shard(path: str | Path, df: pd.DataFrame) -> None:
    """Write perturbed-shard rows atomically with the contract's column types."""
    write_parquet_atomic(
        path, pa.Table.from_pandas(df[PERTURBED_SCHEMA.names], schema=PERTURBED_SCHEMA, preserve_index=False)
    )


def calibration_report(shards: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Hit rate and parameter distribution per (perturbation, level), and a JSON summary.

    Returns the per-(type, level) table (``perturbation, category, level, n, in_band_rate, n_unreachable
    (outputs whose band no parameter in the bounded range reaches), ssim_mean,
    ssim_min, ssim_max, param_min, param_q25, param_median, param_q75, param_max, misses``) and a dict
    with the overall and per-level hit rates and that table's rows.
    """
    cols = ["image_id", "perturbation", "category", "level", "ssim", "param", "in_band", "reason"]
    frames = [s[cols] for s in shards if len(s)]
    if not frames:
        empty = pd.DataFrame(columns=["perturbation", "category", "level", "n", "in_band_rate"])
        return empty, {"n_outputs": 0, "in_band_rate": None, "per_level": {}, "rows": []}
    allr = pd.concat(frames, ignore_index=True)
    unreach = ~allr["in_band"].astype(bool) & allr["reason"].fillna("").str.startswith("unreachable")
    out = []
    for (name, level), g in allr.groupby(["perturbation", "level"], sort=True):
        q = g["param"].quantile([0.0, 0.25, 0.5, 0.75, 1.0]).to_numpy()
        out.append(
            {
                "perturbation": name,
                "category": g["category"].iloc[0],
                "level": int(level),
                "n": len(g),
                "in_band_rate": float(g["in_band"].mean()),
                "n_unreachable": int(unreach[g.index].sum()),
                "ssim_mean": float(g["ssim"].mean()),
                "ssim_min": float(g["ssim"].min()),
                "ssim_max": float(g["ssim"].max()),
                "param_min": q[0],
                "param_q25": q[1],
                "param_median": q[2],
                "param_q75": q[3],
                "param_max": q[4],
                "misses": "; ".join(f"{r.image_id}: {r.reason}" for r in g[~g["in_band"]].itertuples())[
                    :2000
                ],
            }
        )
    table = pd.DataFrame(out)
    summary = {
        "n_outputs": len(allr),
        "in_band_rate": float(allr["in_band"].mean()),
        "n_unreachable": int(unreach.sum()),
        "in_band_rate_reachable": float(allr["in_band"][~unreach].mean()) if (~unreach).any() else None,
        "per_level": {str(k): float(v) for k, v in allr.groupby("level")["in_band"].mean().items()},
        "per_type": {str(k): float(v) for k, v in allr.groupby("perturbation")["in_band"].mean().items()},
        "rows": json.loads(table.to_json(orient="records")),
    }
    return table, summary


def write_calibration_report(
    shard_paths: Sequence[str | Path], csv_path: str | Path, json_path: str | Path, dataset: str = ""
) -> dict[str, Any]:
    """Read perturbed shards, write the report as CSV and JSON (atomically); returns the JSON summary."""
    shards = [
        pd.read_parquet(
            p, columns=["image_id", "perturbation", "category", "level", "ssim", "param", "in_band", "reason"]
        )
        for p in shard_paths
    ]
    table, summary = calibration_report(shards)
    summary = {"dataset": dataset, **summary}
    write_text_atomic(csv_path, table.to_csv(index=False, float_format="%.6g"))
    write_json_atomic(json_path, summary)
    log.info("%s: %s outputs, in-band rate %s", dataset, summary["n_outputs"], summary["in_band_rate"])
    return summary
