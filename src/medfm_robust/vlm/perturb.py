"""Perturbed VLM inputs from the perturbation engine (:func:`medfm_robust.perturb.table.perturb_table`).

Every test sample gets the types applicable to its modality (base types plus its family's) at every
level. Draws are keyed like the engine's (``(dataset, image_id, type)`` + global seed; the levels of a key
share one random layout and differ only in the severity parameter):

- a demo sample built from a canonical image (``canonical_id = "{dataset}/{image_id}"``) uses the canonical
  key, so its perturbed image is byte-identical to ``paths.perturbed_shard(dataset, type)`` (which is
  read instead of recomputed when it holds the image);
- another VQA / caption sample uses ``(vlm_dataset, image_id)``: questions on one image share its
  perturbed versions;
- another grounding sample uses ``(vlm_dataset, "{image_id}|{sample_id}")`` with its own mask (or its box as
  a box mask), so each target moves with label-moving types; the box is recomputed from the moved mask.

:func:`perturb_vlm_dataset` writes ``paths.vlm_perturbed(dataset, perturbation)`` (rows in the
perturbed-shard contract of ``docs/ARCHITECTURE.md`` for the keys no canonical shard covers; one job per
VLM dataset). :func:`conditions_for` joins test samples with those rows (and the canonical shards) into the
conditions table that evaluation feeds to :func:`medfm_robust.vlm.scoring.score_outputs`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfm_robust.boxes import box_text
from medfm_robust.errors import DataError
from medfm_robust.io import read_parquet_checked
from medfm_robust.perturb.registry import MODALITIES
from medfm_robust.vlm.datasets import read_samples

log = logging.getLogger(__name__)

LEVELS = (1, 2, 3, 4, 5)
CONDITION_EXTRA = ("perturbation", "category", "level", "ssim", "param", "in_band", "reason", "seed")


def perturbation_key(task: str, sample: Mapping[str, Any]) -> tuple[str, str]:
    """(dataset, image_id) under which the perturbation engine draws for ``sample`` (see module doc)."""
    canonical = str(sample.get("canonical_id") or "")
    if canonical:
        ds, _, image_id = canonical.partition("/")
        if not image_id:
            raise DataError(
                f"sample {sample['sample_id']!r}: canonical_id {canonical!r} is not 'dataset/image_id'"
            )
        return ds, image_id
    if task == "grounding":
        return str(sample["dataset"]), f"{sample['image_id']}|{sample['sample_id']}"
    return str(sample["dataset"]), str(sample["image_id"])


def vlm_perturbations(modalities: Iterable[str], include: Iterable[str] | None = None,
                      exclude: Iterable[str] | None = None) -> list[str]:
    """Union of the types applicable to ``modalities``, in registry order (the files a dataset gets)."""
    from medfm_robust.perturb import REGISTRY, applicable_types

    wanted: set[str] = set()
    for m in modalities:
        wanted.update(applicable_types(m, include, exclude))
    return [n for n in REGISTRY if n in wanted]


def _applicable(modality: str, name: str, include: Iterable[str] | None,
                exclude: Iterable[str] | None) -> bool:
    from medfm_robust.perturb import applicable_types

    if modality not in MODALITIES:
        raise DataError(f"unknown modality '{modality}'")
    return name in applicable_types(modality, include, exclude)


def engine_rows(samples_by_task: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One input row per perturbation key of the test samples: ``image_id``, ``dataset``, ``modality``,
    ``image_png``, ``mask_png`` (grounding), ``box`` (grounding). Conflicting inputs for one key raise."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for task, df in sorted(samples_by_task.items()):
        for rec in df[df["split"] == "test"].to_dict("records"):
            ds, image_id = perturbation_key(task, rec)
            grounding = task == "grounding"
            row = {"image_id": image_id, "dataset": ds, "modality": rec["modality"],
                   "image_png": rec["image_png"], "mask_png": rec.get("mask_png") if grounding else None,
                   "box": list(rec["box"]) if grounding and rec.get("box") is not None else None}
            old = rows.get((ds, image_id))
            if old is None:
                rows[(ds, image_id)] = row
            elif old["image_png"] != row["image_png"]:
                raise DataError(f"{ds}/{image_id}: two different images share one perturbation key")
            elif grounding and old["box"] is None:
                rows[(ds, image_id)] = row  # keep the labelled version (canonical images: same mask)
    columns = ["image_id", "dataset", "modality", "image_png", "mask_png", "box"]
    out = pd.DataFrame(list(rows.values()), columns=columns)
    return out.sort_values(["dataset", "image_id"], kind="stable").reset_index(drop=True)


def _covered(shards: Sequence[str | Path], levels: Sequence[int]) -> set[tuple[str, str]]:
    """Keys (dataset, image_id) that have every level in the given perturbed shards."""
    have: dict[tuple[str, str], set[int]] = {}
    for p in shards:
        cols = ["dataset", "image_id", "level"]
        t = read_parquet_checked(p, cols, kind="perturbed shard", columns=cols)
        for ds, iid, lvl in zip(t["dataset"], t["image_id"], t["level"], strict=True):
            have.setdefault((str(ds), str(iid)), set()).add(int(lvl))
    return {k for k, v in have.items() if set(levels) <= v}


def perturb_vlm_dataset(
    sample_paths: Sequence[str | Path],
    out_paths: Mapping[str, str | Path],
    *,
    canonical_shards: Mapping[str, Sequence[str | Path]] | None = None,
    global_seed: int = 0,
    levels: Sequence[int] = LEVELS,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    bands: Sequence[Sequence[float]] | None = None,
    max_evals: int | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write one perturbed shard per type in ``out_paths`` (type -> path) for a VLM dataset.

    ``sample_paths``: the dataset's sample tables (``.../{task}.parquet``; the task is the file stem).
    ``canonical_shards``: type -> canonical perturbed shards whose keys need no recomputation.
    ``levels``, ``bands``, ``max_evals`` and per-type ``overrides`` (``param_range``, ``bands``, ``levels``,
    ``max_evals``, ``options``) are the perturbation stage's settings (``perturb.*``), so canonical and VLM
    outputs agree.
    Returns the number of calibrated keys per type. Files are written even when empty.
    """
    from medfm_robust.perturb.registry import get_spec
    from medfm_robust.perturb.table import perturb_table, write_perturbed_shard

    samples = {Path(p).stem: read_samples(p) for p in sample_paths}
    rows = engine_rows(samples)
    counts: dict[str, int] = {}
    for name in sorted(out_paths):
        get_spec(name)
        kwargs: dict[str, Any] = {"bands": bands, "levels": levels}
        if max_evals is not None:
            kwargs["max_evals"] = max_evals
        kwargs.update((overrides or {}).get(name, {}))
        lv = kwargs["levels"]
        covered = _covered((canonical_shards or {}).get(name, []), lv)
        mask = [
            _applicable(m, name, include, exclude) and (ds, iid) not in covered
            for m, ds, iid in zip(rows["modality"], rows["dataset"], rows["image_id"], strict=True)
        ]
        todo = rows[np.asarray(mask, dtype=bool)] if len(rows) else rows
        table = perturb_table(todo, name, global_seed=global_seed, progress=progress, **kwargs)
        write_perturbed_shard(out_paths[name], table)
        counts[name] = len(todo)
        log.info("%s: calibrated %d keys x %d levels (%d covered by canonical shards)", name, len(todo),
                 len(lv), len(covered))
    return counts


def _shard_index(shards: Sequence[str | Path], perturbation: str,
                 wanted: set[tuple[str, str]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """(dataset, image_id, level) -> perturbed row of the ``wanted`` keys in ``shards`` (all of type
    ``perturbation``; a shard of another type, or a missing one, raises ``DataError``)."""
    index: dict[tuple[str, str, int], dict[str, Any]] = {}
    for p in shards:
        t = read_parquet_checked(p, ["dataset", "image_id", "perturbation"], kind="perturbed shard")
        if len(t) and set(t["perturbation"]) != {perturbation}:
            raise DataError(f"{p}: holds {sorted(set(t['perturbation']))}, expected '{perturbation}'")
        keep = [(str(d), str(i)) in wanted for d, i in zip(t["dataset"], t["image_id"], strict=True)]
        for rec in t[np.asarray(keep, dtype=bool)].to_dict("records") if len(t) else []:
            index[(str(rec["dataset"]), str(rec["image_id"]), int(rec["level"]))] = rec
    return index


def conditions_for(
    samples: pd.DataFrame,
    task: str,
    perturbation: str,
    shards: Sequence[str | Path],
    *,
    levels: Sequence[int] = LEVELS,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Conditions table of ``perturbation``: every applicable test sample at every level.

    ``shards``: perturbed shards holding the samples' keys (the VLM shard of this type and, for demo
    samples, the canonical ones). Columns: the sample columns (``image_png`` = the perturbed image; for
    label-moving types ``box`` / ``mask_png`` moved) plus ``perturbation``, ``category``, ``level``, ``ssim``,
    ``param``, ``in_band``, ``reason``, ``seed``. A grounding target moved out of the image is dropped and
    logged. A key missing from ``shards`` raises ``DataError``. Sorted by (``sample_id``, ``level``).
    """
    from medfm_robust.perturb.registry import get_spec

    spec = get_spec(perturbation)
    test = [r for r in samples[samples["split"] == "test"].to_dict("records")
            if _applicable(r["modality"], perturbation, include, exclude)]
    index = _shard_index(shards, perturbation, {perturbation_key(task, r) for r in test})
    out: list[dict[str, Any]] = []
    dropped = 0
    for rec in test:
        ds, iid = perturbation_key(task, rec)
        for level in levels:
            row = index.get((ds, iid, int(level)))
            if row is None:
                raise DataError(f"sample {rec['sample_id']!r}: no '{perturbation}' level {level} output for "
                                f"{ds}/{iid} in {[str(s) for s in shards]}")
            new = dict(rec)
            new["image_png"] = row["image_png"]
            if task == "grounding" and spec.moves_labels:
                box = row.get("box")
                if box is None or (isinstance(box, float) and np.isnan(box)):
                    dropped += 1
                    continue
                new["box"] = [int(v) for v in box]
                new["mask_png"] = row.get("mask_png")
                new["answer"] = new["reference"] = box_text(new["box"])
            new.update({k: row[k] for k in ("perturbation", "category", "ssim", "param", "in_band", "reason",
                                             "seed")})
            new["level"] = int(level)
            out.append(new)
    if dropped:
        log.warning("%s/%s: %d (sample, level) pairs dropped: target moved out of the image", task,
                    perturbation, dropped)
    cols = [*samples.columns, *[c for c in CONDITION_EXTRA if c not in samples.columns]]
    df = pd.DataFrame(out, columns=cols)
    return df.sort_values(["sample_id", "level"], kind="stable").reset_index(drop=True)


def engine_settings(perturb_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The perturbation stage's settings (config ``perturb``) as keyword arguments of
    :func:`perturb_vlm_dataset` (``levels``, ``bands``, ``max_evals``, ``include``, ``exclude``,
    ``overrides``); :func:`conditions_for` needs ``levels`` (per type: ``overrides[type].levels``),
    ``include`` and ``exclude``."""
    return {
        "levels": tuple(perturb_cfg.get("levels", LEVELS)),
        "bands": perturb_cfg.get("bands"),
        "max_evals": perturb_cfg.get("max_evals"),
        "include": list(perturb_cfg.get("include") or []) or None,
        "exclude": list(perturb_cfg.get("exclude") or []) or None,
        "overrides": dict(perturb_cfg.get("overrides") or {}),
    }


def write_conditions(
    samples_path: str | Path,
    task: str,
    out_paths: Mapping[str, str | Path],
    shards: Mapping[str, Sequence[str | Path]],
    *,
    levels: Sequence[int] = LEVELS,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, int]:
    """Materialise :func:`conditions_for` as one Parquet per type (``out_paths``: type -> path), e.g.
    ``paths.vlm_perturbed``-style files; ``shards``: type -> perturbed shards.

    Calling :func:`conditions_for` inside the evaluation job avoids these copies of the perturbed images;
    this is for layouts that want a file per (dataset, task, type). Returns rows written per type.
    """
    from medfm_robust.io import write_parquet_atomic

    samples = read_samples(samples_path)
    written: dict[str, int] = {}
    for name in sorted(out_paths):
        lv = (overrides or {}).get(name, {}).get("levels", levels)
        df = conditions_for(samples, task, name, shards.get(name, []), levels=lv, include=include,
                            exclude=exclude)
        write_parquet_atomic(out_paths[name], df)
        written[name] = len(df)
    return written
