"""Scoring of segmentation samples: the evaluated model, batched predictions and metric rows.

Images are scored at their stored size (prediction ``logit > 0`` against the ground-truth mask ``> 0``). Each
distinct image goes through the image encoder at most once per encoder weights (through
:class:`medfm_robust.seg.cache.EmbeddingEncoder`); the decoder runs in batches.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medfm_robust.config import section_defaults
from medfm_robust.devices import pick_device
from medfm_robust.metrics.segmentation import METRIC_COLUMNS, NSD_TOLERANCE_PX, segmentation_scores
from medfm_robust.seg.cache import EmbeddingEncoder
from medfm_robust.seg.eval_samples import Sample, batches, box_tensor
from medfm_robust.seg.models import PromptableSegmenter, images_to_batch
from medfm_robust.seg.prompts import BoxJitter

log = logging.getLogger(__name__)


def _default_batch_size() -> int:
    """The schema's ``segmentation.models.<m>.batch_size`` default (read when first needed)."""
    return int(section_defaults("segmentation.models.*")["batch_size"])


@dataclass(frozen=True)
class EvalSettings:
    """Settings of an evaluation job.

    ``batch_size``: images per encoder/decoder batch; ``max_images``: evaluated test images (None = all,
    see :func:`select_image_ids`); ``attack_max_images``: the first N of those are attacked (None = all);
    ``jitter``: box jitter; ``cache_dir``: embedding cache root (None disables it); ``device``: ``auto``
    (CUDA when available), ``cpu`` or ``cuda``; ``threads``: torch CPU threads (None = torch default);
    ``seed``: global seed (PGD random start); ``nsd_tolerance``: NSD tolerance in pixels.
    """

    batch_size: int = field(default_factory=_default_batch_size)
    max_images: int | None = None
    attack_max_images: int | None = None
    jitter: BoxJitter = field(default_factory=BoxJitter)
    cache_dir: str | None = None
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    nsd_tolerance: float = NSD_TOLERANCE_PX


@dataclass(frozen=True)
class RunIdentity:
    """What is evaluated: model, strategy, checkpoints (``finetuned`` None for ``zero_shot``) and the training
    seed of the fine-tuned checkpoint (0 for ``zero_shot``, which is not trained)."""

    model: str
    strategy: str
    base_checkpoint: str | None
    finetuned: str | None = None
    train_seed: int = 0


def load_model(run: RunIdentity, device: torch.device) -> PromptableSegmenter:
    """The evaluated model in ``eval()`` mode: base checkpoint plus, for trained strategies, the fine-tuned
    tensors (through ``medfm_robust.seg.checkpoint.load_for_eval``, LoRA merged)."""
    from medfm_robust.seg.checkpoint import load_for_eval

    model = load_for_eval(run.model, run.base_checkpoint, run.finetuned, run.strategy, device=device)
    return model.eval()  # type: ignore[return-value]


@torch.no_grad()
def predict_masks(
    model: PromptableSegmenter, encoder: EmbeddingEncoder, batch: Sequence[Sample]
) -> np.ndarray:
    """Boolean predictions ``B x H x W`` for one batch (one encoder pass per image not in the cache)."""
    x = images_to_batch([s.image for s in batch], value_ranges=[s.value_range for s in batch])
    emb = encoder.encode(x, [s.image_hash for s in batch])
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    logits = model.decode(emb, box_tensor(batch).to(emb.device), hw)
    return (logits[:, 0] > 0).cpu().numpy()


def score_row(
    run: RunIdentity, dataset: str, checkpoint_hash: str, sample: Sample, scores: Mapping[str, float]
) -> dict[str, Any]:
    return {
        "model": run.model,
        "strategy": run.strategy,
        "train_seed": run.train_seed,
        "dataset": dataset,
        "image_id": sample.image_id,
        **sample.meta,
        **scores,
        "checkpoint_hash": checkpoint_hash,
    }


def metric_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    frame["level"] = frame["level"].astype("int8")
    frame["train_seed"] = frame["train_seed"].astype("int64")
    frame["in_band"] = frame["in_band"].astype(bool)
    frame["reachable"] = frame["reachable"].astype(bool)
    for col in ("ssim", "iou", "dice", "nsd", "hd95"):
        frame[col] = frame[col].astype("float64")
    return frame


def score_samples(
    model: PromptableSegmenter,
    encoder: EmbeddingEncoder,
    samples: Sequence[Sample],
    run: RunIdentity,
    dataset: str,
    settings: EvalSettings,
    desc: str,
) -> pd.DataFrame:
    """Metric rows of ``samples`` (in their order)."""
    scores: dict[int, dict[str, float]] = {}
    index = {id(s): i for i, s in enumerate(samples)}
    with tqdm(total=len(samples), desc=desc, unit="img", leave=False) as bar:
        for batch in batches(samples, settings.batch_size):
            for s, pred in zip(batch, predict_masks(model, encoder, batch), strict=True):
                scores[index[id(s)]] = segmentation_scores(pred, s.mask, settings.nsd_tolerance)
            bar.update(len(batch))
    ckpt = getattr(model, "checkpoint_hash", "")
    return metric_frame([score_row(run, dataset, ckpt, s, scores[i]) for i, s in enumerate(samples)])


def prepare_model(
    run: RunIdentity, settings: EvalSettings, model: PromptableSegmenter | None
) -> tuple[PromptableSegmenter, torch.device]:
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    device = pick_device(settings.device, "segmentation.device")
    model = load_model(run, device) if model is None else model.to(device).eval()
    log.info(
        "model %s / %s on %s (checkpoint %s)",
        run.model,
        run.strategy,
        device,
        getattr(model, "checkpoint_hash", "?")[:16],
    )
    return model, device
