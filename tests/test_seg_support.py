"""Helpers shared by the segmentation tests (synthetic shards, a quickly trained small SAM), with tests."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medfm_robust.boxes import require_box
from medfm_robust.io import encode_png, write_parquet_atomic
from medfm_robust.seeding import rng_for
from medfm_robust.seg.models import SamLongestSide, TinySamConfig, build_tiny_sam

SMALL = TinySamConfig(
    img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2, prompt_dim=32, decoder_mlp=64
)


def ellipse_sample(i: int, size: int = 64, gray: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A bright textured ellipse on a darker noisy background: ``(uint8 image, bool mask)``."""
    rng = rng_for("seg-test-ellipse", i, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    ry, rx = rng.uniform(0.12, 0.28, 2) * size
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    fg, bg = rng.uniform(150, 220), rng.uniform(30, 90)
    img = np.where(mask, fg, bg) + rng.normal(0, 10, (size, size))
    img = np.clip(img, 0, 255).astype(np.uint8)
    if not gray:
        img = np.stack([img, (img * 0.8).astype(np.uint8), (img * 0.6).astype(np.uint8)], axis=2)
    return img, mask


def write_test_shard(path: Path, dataset: str, n: int, size: int = 64, modality: str = "ct") -> list[str]:
    """A canonical test shard of ``n`` ellipse images; returns the image ids (sorted)."""
    rows = []
    for i in range(n):
        img, mask = ellipse_sample(i, size)
        rows.append(
            {
                "image_id": f"img{i:03d}",
                "dataset": dataset,
                "modality": modality,
                "split": "test",
                "image_png": encode_png(img),
                "mask_png": encode_png(mask.astype(np.uint8) * 255),
                "box": [int(v) for v in require_box(mask)],
                "height": size,
                "width": size,
                "channels": 3,
                "source": f"synthetic/{i}",
            }
        )
    write_parquet_atomic(path, pd.DataFrame(rows))
    return [r["image_id"] for r in rows]


def write_perturbed_shard(
    path: Path,
    dataset: str,
    perturbation: str,
    n: int,
    levels: int = 3,
    size: int = 64,
    moving: bool = False,
    skip: set[str] | None = None,
) -> pd.DataFrame:
    """A perturbed shard over the images of :func:`write_test_shard`: Gaussian noise growing with the level,
    or (``moving``) a horizontal shift by ``2 * level`` pixels that moves the mask and box."""
    rows = []
    for i in range(n):
        image_id = f"img{i:03d}"
        if skip and image_id in skip:
            continue
        img, mask = ellipse_sample(i, size)
        for level in range(1, levels + 1):
            rng = rng_for("seg-test-pert", perturbation, image_id, level)
            mask_png = None
            m = mask
            if moving:
                shift = 2 * level
                out = np.roll(img, shift, axis=1)
                m = np.roll(mask, shift, axis=1)
                mask_png = encode_png(m.astype(np.uint8) * 255)
            else:
                out = np.clip(img + rng.normal(0, 8 * level, img.shape), 0, 255).astype(np.uint8)
            rows.append(
                {
                    "image_id": image_id,
                    "dataset": dataset,
                    "modality": "ct",
                    "perturbation": perturbation,
                    "category": "base",
                    "level": np.int8(level),
                    "image_png": encode_png(out),
                    "mask_png": mask_png,
                    "box": [int(v) for v in require_box(m)],
                    "ssim": 1.0 - 0.1 * level,
                    "param": float(level),
                    "in_band": level not in (2, 3),
                    "reason": {2: "below band", 3: "unreachable: SSIM at the range end 0.91"}.get(level, ""),
                    "seed": 7,
                }
            )
    frame = pd.DataFrame(rows).sort_values(["image_id", "level"]).reset_index(drop=True)
    write_parquet_atomic(path, frame)
    return frame


@functools.lru_cache(maxsize=1)
def trained_small_sam() -> SamLongestSide:
    """A small SAM (64 input, 8 x 8 embedding) trained for a few seconds on ellipses, in eval() mode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only add contention on a shared 2-core machine
    try:
        return _train_small_sam()
    finally:
        torch.set_num_threads(threads)


def _train_small_sam() -> SamLongestSide:
    torch.manual_seed(0)
    model = build_tiny_sam(SMALL)
    data = [ellipse_sample(1000 + i) for i in range(64)]
    x = torch.from_numpy(np.stack([d[0] for d in data])).permute(0, 3, 1, 2).float() / 255.0
    gt = torch.from_numpy(np.stack([d[1] for d in data]))[:, None].float()
    boxes = torch.from_numpy(np.stack([require_box(d[1]) for d in data]).astype(np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(120):
        idx = torch.from_numpy(rng_for("seg-test-train", step).choice(64, 8, replace=False))
        logits = model(x[idx], boxes[idx])
        prob = torch.sigmoid(logits)
        inter = (prob * gt[idx]).sum(dim=(1, 2, 3))
        dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2, 3)) + gt[idx].sum(dim=(1, 2, 3)) + 1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, gt[idx]) + dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.checkpoint_hash = "test-small-sam"
    return model.eval()


def test_ellipse_samples_are_deterministic_and_nonempty() -> None:
    a, ma = ellipse_sample(3)
    b, mb = ellipse_sample(3)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3) and ma.sum() > 20


def test_trained_small_sam_segments_held_out_ellipses() -> None:
    from medfm_robust.metrics.segmentation import dice

    model = trained_small_sam()
    data = [ellipse_sample(i) for i in range(8)]
    x = torch.from_numpy(np.stack([d[0] for d in data])).permute(0, 3, 1, 2).float() / 255.0
    boxes = torch.from_numpy(np.stack([require_box(d[1]) for d in data]).astype(np.float32))
    with torch.no_grad():
        pred = (model(x, boxes)[:, 0] > 0).numpy()
    assert np.mean([dice(p, d[1]) for p, d in zip(pred, data, strict=True)]) > 0.8
