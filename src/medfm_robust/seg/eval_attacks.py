"""FGSM and PGD on the clean test subset of one (model, strategy, dataset): ``fgsm`` / ``pgd`` metric rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medfm_robust.errors import DataError
from medfm_robust.io import write_parquet_atomic
from medfm_robust.metrics.segmentation import segmentation_scores
from medfm_robust.seg.attacks import ATTACKS, AttackSettings, run_attack
from medfm_robust.seg.eval_samples import Sample, batches, box_tensor, load_test_samples, select_image_ids
from medfm_robust.seg.eval_scoring import EvalSettings, RunIdentity, metric_frame, prepare_model, score_row
from medfm_robust.seg.models import PromptableSegmenter, images_to_batch


def _ssim_u8(a: np.ndarray, b: np.ndarray) -> float:
    """The project's SSIM (``medfm_robust.perturb.ssim``) between two 8-bit images."""
    from medfm_robust.perturb.ssim import ssim

    return float(ssim(a, b))


def _attack_rows(
    model: PromptableSegmenter,
    device: torch.device,
    run: RunIdentity,
    dataset: str,
    name: str,
    level: int,
    attack: AttackSettings,
    batch: Sequence[Sample],
    settings: EvalSettings,
) -> list[dict[str, Any]]:
    """Metric rows of one batch attacked with ``name`` at ``level``."""
    rows: list[dict[str, Any]] = []
    ranges = [s.value_range for s in batch]
    x = images_to_batch([s.image for s in batch], value_ranges=ranges).to(device)
    gt = torch.from_numpy(np.stack([s.mask for s in batch])[:, None]).to(device)
    boxes = box_tensor(batch).to(device)
    keys = [(dataset, s.image_id) for s in batch]
    x_adv = run_attack(model, name, level, attack, x, boxes, gt, keys, settings.seed, value_ranges=ranges)
    with torch.no_grad():
        preds = (model(x_adv, boxes)[:, 0] > 0).cpu().numpy()
    adv_u8 = np.round(x_adv.permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)
    clean_u8 = np.round(x.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).cpu().numpy() * 255)
    for i, s in enumerate(batch):
        meta = {
            **s.meta,
            "perturbation": name,
            "category": "adversarial",
            "level": level,
            "ssim": _ssim_u8(clean_u8[i].astype(np.uint8), adv_u8[i]),
            "in_band": True,
        }
        scores = segmentation_scores(preds[i], s.mask, settings.nsd_tolerance)
        rows.append(
            score_row(
                run,
                dataset,
                getattr(model, "checkpoint_hash", ""),
                Sample(s.image_id, s.image, s.mask, s.box, meta),
                scores,
            )
        )
    return rows


def score_attacks(
    run: RunIdentity,
    dataset: str,
    test_shard: str | Path,
    perturbed: Sequence[str | Path],
    settings: EvalSettings,
    attack: AttackSettings,
    model: PromptableSegmenter | None = None,
) -> dict[str, pd.DataFrame]:
    """FGSM and PGD at every level on the clean test subset: attack name -> metric rows.

    ``perturbed``: the dataset's perturbed shards, read only to select the same images as
    :func:`medfm_robust.seg.evaluate.score_dataset` (:func:`select_image_ids`).

    Rows: category ``adversarial``, ``level`` 1..n, ``ssim`` between the 8-bit clean and adversarial RGB
    images, ``in_band`` True (the budget is exact by construction), sorted by (image id, level). ``model``:
    an already built model (tests, benchmarks, a job that evaluated it already) instead of loading
    ``run``'s checkpoints.
    """
    model, device = prepare_model(run, settings, model)
    ids = select_image_ids(test_shard, perturbed, settings.max_images)
    if settings.attack_max_images is not None:
        ids = ids[: settings.attack_max_images]
    clean = load_test_samples(test_shard, dataset, ids, settings.jitter)
    frames = {}
    for name in ATTACKS:
        rows: list[dict[str, Any]] = []
        for level in tqdm(attack.levels, desc=f"{dataset} {name}", unit="level", leave=False):
            for batch in batches(clean, settings.batch_size):
                rows += _attack_rows(model, device, run, dataset, name, level, attack, batch, settings)
        frame = metric_frame(rows).sort_values(["image_id", "level"], kind="stable")
        frames[name] = frame.reset_index(drop=True)
    return frames


def evaluate_attacks(
    run: RunIdentity,
    dataset: str,
    test_shard: str | Path,
    perturbed: Sequence[str | Path],
    outputs: Mapping[str, str | Path],
    settings: EvalSettings,
    attack: AttackSettings,
    model: PromptableSegmenter | None = None,
) -> dict[str, int]:
    """:func:`score_attacks`, one Parquet per attack (``outputs``: attack name -> path); returns the rows
    written per attack."""
    if set(outputs) != set(ATTACKS):
        raise DataError(f"outputs {sorted(outputs)} must be exactly {list(ATTACKS)}")
    frames = score_attacks(run, dataset, test_shard, perturbed, settings, attack, model)
    for name, frame in frames.items():
        write_parquet_atomic(outputs[name], frame)
    return {name: len(frame) for name, frame in frames.items()}
