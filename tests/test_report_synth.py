"""Synthetic per-image metric Parquet files with exactly the contract columns (for the report tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medfm_robust.io import write_json_atomic, write_parquet_atomic
from medfm_robust.seeding import rng_for

SEG_PERTURBATIONS = {
    "gaussian_noise": "base",
    "motion_blur": "base",
    "hair": "medical",
    "ghosting": "medical",
}
STRATEGY_EFFECT = {"zero_shot": 0.02, "full": 0.01, "lora": 0.05}


def seg_frame(
    model: str,
    strategy: str,
    dataset: str,
    perturbation: str,
    n_images: int = 6,
    levels: tuple[int, ...] = (1, 2, 3),
    seed: int = 0,
) -> pd.DataFrame:
    """Rows of one segmentation metrics file; drops grow with level and with the strategy's effect."""
    rng = rng_for("synth", model, strategy, dataset, global_seed=seed)
    clean_iou = np.clip(0.8 + 0.05 * rng.standard_normal(n_images), 0, 1)
    rows = []
    ids = [f"{dataset}_{i:03d}" for i in range(n_images)]
    if perturbation == "clean":
        for i, iid in enumerate(ids):
            rows.append((iid, "clean", "clean", 0, 1.0, True, clean_iou[i]))
    else:
        cat = "adversarial" if perturbation in ("fgsm", "pgd") else SEG_PERTURBATIONS[perturbation]
        eff = STRATEGY_EFFECT.get(strategy, 0.03) * (2.0 if cat == "medical" else 1.0)
        for i, iid in enumerate(ids):
            for lv in levels:
                r = rng_for("synth", model, strategy, dataset, perturbation, iid, lv, global_seed=seed)
                iou = clean_iou[i] - eff * lv - 0.01 * r.random()
                rows.append((iid, perturbation, cat, lv, 0.9 - 0.05 * lv, lv != 3 or i % 2 == 0, iou))
    df = pd.DataFrame(
        rows, columns=["image_id", "perturbation", "category", "level", "ssim", "in_band", "iou"]
    )
    df["dice"] = 2 * df["iou"] / (1 + df["iou"])
    df["nsd"] = df["dice"]
    df["hd95"] = 10 * (1 - df["iou"])
    df.insert(0, "model", model)
    df.insert(1, "strategy", strategy)
    df.insert(2, "dataset", dataset)
    df.insert(3, "modality", "mri" if "mri" in dataset else "dermoscopy")
    df["level"] = df["level"].astype("int8")
    df["checkpoint_hash"] = "abc"
    return df


def write_seg_tree(
    root: Path,
    models=("tiny_sam",),
    strategies=("zero_shot", "full", "lora"),
    datasets=("demo_derm", "demo_mri"),
    adversarial: bool = True,
    train_seeds: tuple[int, ...] = (),
) -> tuple[list[str], list[str]]:
    """Write a metric tree and checkpoint sidecars under ``root``; return (metric paths, sidecar paths).

    ``train_seeds``: the trained strategies' training seeds (``zero_shot``: seed 0); the files then carry a
    ``train_seed`` column and seed k adds ``0.01 * k`` to every perturbed IoU drop. Empty: files without
    the column (written before training seeds), one seed.
    """
    paths, sidecars = [], []
    perts = ["clean", *SEG_PERTURBATIONS, *(["fgsm", "pgd"] if adversarial else [])]
    for m in models:
        for s in strategies:
            seeds = (0,) if s == "zero_shot" or not train_seeds else train_seeds
            for k in seeds:
                for d in datasets:  # one file per run, its conditions in name order (as the workflow writes)
                    frames = []
                    for p in sorted(perts):
                        frame = seg_frame(m, s, d, p)
                        if train_seeds:
                            frame.insert(2, "train_seed", k)
                            frame["iou"] -= 0.01 * k * (frame["perturbation"] != "clean")
                        frames.append(frame)
                    path = root / "metrics" / "segmentation" / m / s / f"seed{k}" / f"{d}.parquet"
                    write_parquet_atomic(path, pd.concat(frames, ignore_index=True))
                    paths.append(str(path))
            for k in seeds if s != "zero_shot" else ():
                for d in datasets:
                    side = root / "checkpoints" / m / d / s / f"seed{k}.json"
                    write_json_atomic(
                        side,
                        {
                            "model": m,
                            "dataset": d,
                            "strategy": s,
                            "train_seed": k,
                            "trainable_params": 1000 if s == "lora" else 50000,
                            "total_params": 100000,
                        },
                    )
                    sidecars.append(str(side))
    return paths, sidecars


def vlm_frame(model: str, task: str, dataset: str, perturbation: str, n: int = 8) -> pd.DataFrame:
    """Rows of one VLM metrics file."""
    rows = []
    for i in range(n):
        sid = f"{task}_{i:03d}"
        levels = [0] if perturbation == "clean" else [1, 2]
        for lv in levels:
            r = rng_for("vlm", model, task, dataset, perturbation, sid, lv).random()
            correct = float(r > 0.3 + 0.15 * lv)
            rows.append(
                {
                    "sample_id": sid,
                    "model": model,
                    "task": task,
                    "dataset": dataset,
                    "modality": "xray",
                    "perturbation": perturbation,
                    "category": "clean" if perturbation == "clean" else "base",
                    "level": lv,
                    "ssim": 1.0,
                    "in_band": True,
                    "raw_output": "A",
                    "parsed": "A",
                    "reference": "A",
                    "correct": correct,
                    "bleu1": r,
                    "bleu2": r,
                    "bleu3": r,
                    "bleu4": r,
                    "rouge_l": r * (1 - 0.1 * lv),
                    "cider": r,
                    "iou": r * (1 - 0.2 * lv),
                    "hit": r > 0.5,
                    "model_revision": "x",
                }
            )
    return pd.DataFrame(rows)


def write_vlm_tree(
    root: Path,
    models=("tiny_llava", "tiny_gemma3"),
    tasks=("vqa", "caption", "grounding"),
    datasets=("demo_xray",),
    perts=("clean", "gaussian_noise", "contrast"),
) -> list[str]:
    """Write VLM metric files; return their paths."""
    paths = []
    for m in models:
        for t in tasks:
            for d in datasets:
                for p in perts:
                    path = root / "metrics" / "vlm" / m / t / d / f"{p}.parquet"
                    write_parquet_atomic(path, vlm_frame(m, t, d, p))
                    paths.append(str(path))
    return paths
