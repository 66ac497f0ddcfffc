"""The embedded default's tiny SAM: pretraining reaches the Dice bar on the demo test splits, and every
fine-tuning strategy beats zero_shot on clean validation Dice of a dataset held out of pretraining (slow:
generates the demo data and trains).

Margins are set against what floating-point differences can move (issue 13): the same pretraining gives
clean test Dice 0.883 / 0.851 on an AVX-512 Xeon (default / AVX2 kernels) and 0.822 on an AVX2 EPYC, so the
bar sits well below all three; fine-tuning on a dataset the model has seen gained nothing measurable
(0.8828 vs 0.8832), so the strategies are fine-tuned on one it has not seen, where they gain clearly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from medfm_robust.config import load_config
from medfm_robust.seg import finetune_config as ft_cfg
from medfm_robust.seg.augment import load_split
from medfm_robust.seg.finetune import finetune_run
from medfm_robust.seg.models import build_model
from medfm_robust.seg.pretrain import pretrain_tiny_sam
from medfm_robust.seg.trainer import evaluate

DICE_BAR = 0.75  # measured 0.822-0.883 across CPU types (see above)
HELD_OUT = "demo_dermoscopy"  # left out of pretraining; the strategies are fine-tuned on it
# Least validation-Dice gain over zero-shot on HELD_OUT, below the smallest gain of three seeds (0, 1, 2: run
# to run divergence bounds what float differences do): full 0.039, enc_only 0.033, dec_only 0.039,
# dec_prompt 0.040, lora 0.028 (seeds 0-1), adapter 0.007 (seeds 0-1; its gain is small with 3 epochs).
MIN_GAIN = {"adapter": 0.0}
DEFAULT_MIN_GAIN = 0.01


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, repo: Path) -> tuple[dict, Path, list[str]]:
    """The embedded default's datasets ingested, and tiny SAM pretrained with its settings."""
    from medfm_robust.data.ingest import ingest_dataset

    cfg = load_config(repo / "config" / "config.yaml")
    root = tmp_path_factory.mktemp("demo")
    data_cfg = {k: cfg["data"][k] for k in ("image_size", "splits", "on_error")}
    names = sorted(cfg["datasets"])
    for name in names:
        ingest_dataset(name, dict(cfg["datasets"][name]), data_cfg, root / "data" / name, seed=cfg["seed"])
    torch.set_num_threads(1)  # one thread: fastest for this tiny model on a shared machine
    datasets = [d for d in ft_cfg.pretrain_datasets(cfg, names) if d != HELD_OUT]
    t0, c0 = time.perf_counter(), time.process_time()
    pretrain_tiny_sam(
        datasets=datasets,
        train_shards=[root / "data" / d / "train.parquet" for d in datasets],
        val_shards=[root / "data" / d / "val.parquet" for d in datasets],
        checkpoint_out=root / "pretrained.safetensors",
        log_csv=root / "pretrained_history.csv",
        curve_png=root / "pretrained_curve.png",
        settings=ft_cfg.pretrain_params(cfg),
        global_seed=cfg["seed"],
        device="cpu",
        progress=False,
    )
    print(
        f"tiny-SAM pretraining: {time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU "
        "(1 thread, shared machine: noisy)"
    )
    return cfg, root, datasets


@pytest.mark.slow
def test_pretrained_tiny_sam_reaches_the_dice_bar_on_test_splits(demo: tuple[dict, Path, list[str]]) -> None:
    _, root, names = demo
    model = build_model("tiny_sam", checkpoint=root / "pretrained.safetensors")
    per_image = []
    per_dataset = {}
    for name in names:
        _, mean, dices = evaluate(model, load_split(root / "data" / name / "test.parquet"))
        per_dataset[name] = round(mean, 3)
        per_image.append(dices)
    dice = float(torch.cat(per_image).mean())
    print(f"tiny-SAM clean test Dice {dice:.3f}; per dataset {per_dataset}")
    meta = json.loads((root / "pretrained.json").read_text())
    assert meta["total_params"] < 400_000
    assert dice >= DICE_BAR


@pytest.mark.slow
def test_every_strategy_beats_zero_shot_on_validation(
    demo: tuple[dict, Path, list[str]], tmp_path: Path
) -> None:
    cfg, root, _ = demo
    dataset = HELD_OUT
    for strategy in cfg["finetune"]["models"]["tiny_sam"]["strategies"]:
        out = tmp_path / f"{strategy}.safetensors"
        result = finetune_run(
            model_name="tiny_sam",
            base_checkpoint=root / "pretrained.safetensors",
            dataset=dataset,
            strategy=strategy,
            train_shard=root / "data" / dataset / "train.parquet",
            val_shard=root / "data" / dataset / "val.parquet",
            checkpoint_out=out,
            log_csv=tmp_path / f"{strategy}.csv",
            curve_png=tmp_path / f"{strategy}.png",
            settings=ft_cfg.run_settings(cfg["finetune"], "tiny_sam", strategy),
            global_seed=cfg["seed"],
            device="cpu",
            progress=False,
        )
        print(
            f"{dataset}/{strategy}: zero-shot {result.zero_shot_val_dice:.3f} -> {result.best_val_dice:.3f} "
            f"({result.trainable_params} trainable, {result.seconds:.1f} s)"
        )
        gain = result.best_val_dice - result.zero_shot_val_dice
        assert gain > MIN_GAIN.get(strategy, DEFAULT_MIN_GAIN), (strategy, gain)
