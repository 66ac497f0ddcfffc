"""Segmentation evaluation throughput: images per second per model, and encoder passes per evaluated image.

Usage::

    .venv/bin/python benchmarks/seg_eval_throughput.py [--n-images 16] [--threads 2] [--json out.json]

* ``tiny_sam`` (random weights; the architecture is what costs) and ``lite_medsam`` (the bundled weights)
  on the CPU; ``medsam`` and ``sam_med2d`` (random weights) on a GPU when one is available.
* "Images per second" is the evaluation path of ``medfm_robust.seg.evaluate``: batched encoder, batched
  decoder, thresholding and the four per-image metrics, on 256 x 256 synthetic RGB images with one
  bright ellipse each. Wall and process CPU time are both reported (CPU time is less disturbed by other
  processes on a shared machine).
* "Encoder passes per evaluated image" runs :func:`evaluate_dataset` on a synthetic test shard plus
  perturbation shards twice with the embedding cache on, as two strategies with the same frozen encoder:
  the first strategy encodes each distinct image once (1.0), the second reads every embedding (0.0).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medfm_robust.boxes import require_box
from medfm_robust.io import encode_png, write_parquet_atomic
from medfm_robust.metrics.segmentation import segmentation_scores
from medfm_robust.seeding import rng_for
from medfm_robust.seg.evaluate import EvalSettings, RunIdentity, evaluate_dataset
from medfm_robust.seg.models import build_model, images_to_batch


def ellipse(i: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A seeded bright ellipse on a noisy background: (uint8 RGB image, bool mask)."""
    rng = rng_for("seg-bench", i)
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    ry, rx = rng.uniform(0.1, 0.25, 2) * size
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    img = np.clip(np.where(mask, 180.0, 60.0) + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)
    return np.repeat(img[:, :, None], 3, axis=2), mask


def throughput(name: str, checkpoint: str | None, device: str, n_images: int, batch: int) -> dict[str, Any]:
    """Images per second through encode + decode + metrics."""
    model = build_model(name, checkpoint, device=device)
    data = [ellipse(i) for i in range(n_images)]
    boxes = torch.from_numpy(np.stack([require_box(m) for _, m in data]).astype(np.float32))

    def run(items: range) -> float:
        encoded = 0.0
        for start in range(items.start, items.stop, batch):
            idx = list(range(start, min(start + batch, items.stop)))
            x = images_to_batch([data[i][0] for i in idx]).to(device)
            with torch.no_grad():
                t = time.perf_counter()
                emb = model.encode(x)
                if device == "cuda":
                    torch.cuda.synchronize()
                encoded += time.perf_counter() - t
                pred = (model.decode(emb, boxes[idx].to(device), (256, 256))[:, 0] > 0).cpu().numpy()
            for j, i in enumerate(idx):
                segmentation_scores(pred[j], data[i][1])
        return encoded

    run(range(min(batch, n_images)))  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    enc = run(range(n_images))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "model": name,
        "device": device,
        "images": n_images,
        "batch": batch,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "images_per_s": round(n_images / wall, 2),
        "encode_ms_per_image": round(1000 * enc / n_images, 1),
    }


def encoder_passes(n_images: int, n_types: int, levels: int) -> dict[str, Any]:
    """Encoder passes per evaluated image for two strategies sharing a frozen encoder (cache on)."""
    model = build_model("tiny_sam")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows, shards = [], {}
        for i in range(n_images):
            img, mask = ellipse(i)
            rows.append(
                {
                    "image_id": f"im{i:03d}",
                    "dataset": "bench",
                    "modality": "ct",
                    "split": "test",
                    "image_png": encode_png(img),
                    "mask_png": encode_png(mask.astype(np.uint8) * 255),
                    "box": [int(v) for v in require_box(mask)],
                }
            )
        write_parquet_atomic(root / "test.parquet", pd.DataFrame(rows))
        for t in range(n_types):
            prows = []
            for i in range(n_images):
                img, mask = ellipse(i)
                for level in range(1, levels + 1):
                    rng = rng_for("seg-bench-noise", t, i, level)
                    noisy = np.clip(img + rng.normal(0, 5 * level, img.shape), 0, 255).astype(np.uint8)
                    prows.append(
                        {
                            "image_id": f"im{i:03d}",
                            "perturbation": f"p{t}",
                            "category": "base",
                            "level": level,
                            "image_png": encode_png(noisy),
                            "mask_png": None,
                            "box": [int(v) for v in require_box(mask)],
                            "ssim": 0.9,
                            "in_band": True,
                        }
                    )
            shards[f"p{t}"] = root / f"p{t}.parquet"
            write_parquet_atomic(shards[f"p{t}"], pd.DataFrame(prows))
        out: dict[str, Any] = {}
        for strategy in ("zero_shot", "dec_only"):
            outputs = {n: root / strategy / f"{n}.parquet" for n in ["clean", *shards]}
            counts = evaluate_dataset(
                RunIdentity("tiny_sam", strategy, None),
                "bench",
                root / "test.parquet",
                shards,
                outputs,
                EvalSettings(batch_size=16, cache_dir=str(root / "cache")),
                model=model,
            )
            evaluated = sum(v for k, v in counts.items() if k not in ("encoder_passes", "cache_hits"))
            out[strategy] = {
                "evaluated": evaluated,
                "encoder_passes": counts["encoder_passes"],
                "passes_per_image": round(counts["encoder_passes"] / evaluated, 3),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-images", type=int, default=16)
    parser.add_argument("--lite-images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [
        throughput("tiny_sam", None, "cpu", args.n_images, 16),
        throughput("lite_medsam", "bundled", "cpu", args.lite_images, 4),
    ]
    if torch.cuda.is_available():
        for name in ("medsam", "sam_med2d"):
            results.append(throughput(name, None, "cuda", args.n_images, 8))
    else:
        print("no CUDA device: medsam and sam_med2d skipped")
    for r in results:
        print(
            f"{r['model']:12s} {r['device']:5s} {r['images_per_s']:8.2f} img/s  "
            f"(encode {r['encode_ms_per_image']} ms/img, wall {r['wall_s']} s, cpu {r['cpu_s']} s)"
        )
    passes = encoder_passes(n_images=4, n_types=3, levels=5)
    for strategy, p in passes.items():
        print(
            f"encoder passes per evaluated image, {strategy}: {p['passes_per_image']} "
            f"({p['encoder_passes']} passes / {p['evaluated']} evaluated)"
        )
    if args.json:
        args.json.write_text(json.dumps({"throughput": results, "encoder_passes": passes}, indent=2) + "\n")


if __name__ == "__main__":
    main()
