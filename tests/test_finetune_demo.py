"""The embedded default's tiny SAM: pretrained on one group of demo datasets (CT, MRI, the MNI152 brain, the
Shepp-Logan phantom: ``finetune.pretrain_tiny_sam.datasets``), fine-tuned on colour photographs held out of
pretraining (``finetune.models.tiny_sam.datasets``), where fine-tuning raises clean test Dice clearly above
zero-shot (slow: generates the demo data, pretrains and fine-tunes).

Measured with the embedded default (seed 0, 1 thread, AVX2 EPYC), clean test Dice gain over zero-shot on
demo_endoscopy / demo_fundus (zero-shot 0.704 / 0.726, mean 0.715): full 0.187 / 0.180 (mean 0.183),
enc_only 0.179 / 0.180 (0.180), lora 0.179 / 0.176 (0.178), dec_only 0.157 / 0.163 (0.160), dec_prompt
0.163 / 0.156 (0.160), adapter 0.179 / 0.140 (0.160). The same pretraining on all eleven
demo datasets left nothing to adapt to (0.834 zero-shot vs 0.835-0.840 after fine-tuning). The test
process pins the CPU kernels as the workflow's jobs do (conftest.py): on an AVX-512 EPYC it measured
zero-shot 0.705 -> full 0.902, lora 0.901 on demo_fundus pinned, but zero-shot 0.887 unpinned (AVX-512
kernels pretrain a different model). Float differences that remain between CPUs moved a pretraining's clean
Dice by up to ~0.06 (issue 13: 0.883 / 0.851 / 0.822 on three CPU/kernel settings), so the asserted gain
sits at a third of the measured ones or less.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import torch

from medfm_robust.config import cross_field_problems, load_config
from medfm_robust.seg import finetune_config as ft_cfg
from medfm_robust.seg.augment import load_split
from medfm_robust.seg.checkpoint import load_for_eval
from medfm_robust.seg.finetune import finetune_run
from medfm_robust.seg.models import build_model
from medfm_robust.seg.pretrain import pretrain_tiny_sam
from medfm_robust.seg.trainer import evaluate

DICE_BAR = 0.75  # pretraining datasets' clean test Dice: measured 0.882 (mean of 0.835-0.975)
HELD_OUT = "demo_fundus"  # one of the fine-tuned datasets (the others cost as much again each)
ZERO_SHOT_CEILING = 0.80  # measured 0.726 on HELD_OUT
STRATEGIES = ("full", "lora")  # the paper's headline pair (gains 0.181 and 0.176 on HELD_OUT)
MIN_GAIN = 0.05


@pytest.fixture(scope="module")
def repo_config(repo: Path) -> dict:
    return load_config(repo / "config" / "config.yaml")


def test_the_embedded_default_holds_the_finetuned_datasets_out_of_pretraining(repo_config: dict) -> None:
    pretrain = repo_config["finetune"]["pretrain_tiny_sam"]
    tuned = repo_config["finetune"]["models"]["tiny_sam"]["datasets"]
    assert pretrain["held_out"] and HELD_OUT in tuned
    assert not set(pretrain["datasets"]) & set(tuned)
    modalities = {name: spec["modality"] for name, spec in repo_config["datasets"].items()}
    assert not {modalities[d] for d in pretrain["datasets"]} & {modalities[d] for d in tuned}
    # evaluated where fine-tuned: every strategy on the held-out group only
    assert repo_config["segmentation"]["models"]["tiny_sam"]["datasets"] == tuned
    overlapping = copy.deepcopy(repo_config)
    overlapping["finetune"]["pretrain_tiny_sam"]["datasets"].append(HELD_OUT)
    assert cross_field_problems(overlapping) == [
        f"config key 'finetune.pretrain_tiny_sam.datasets': ['{HELD_OUT}'] also in finetune.models.tiny_sam."
        "datasets (held_out: the fine-tuning datasets must be left out of pretraining)"
    ]
    unlisted = copy.deepcopy(repo_config)
    unlisted["finetune"]["models"]["tiny_sam"]["datasets"] = None
    assert "needs both" in cross_field_problems(unlisted)[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, repo_config: dict) -> tuple[dict, Path, list[str]]:
    """The pretraining datasets and HELD_OUT ingested, and tiny SAM pretrained with the default's settings."""
    from medfm_robust.data.ingest import ingest_dataset

    cfg = repo_config
    root = tmp_path_factory.mktemp("demo")
    data_cfg = cfg["data"]
    datasets = ft_cfg.pretrain_datasets(cfg, sorted(cfg["datasets"]))
    for name in [*datasets, HELD_OUT]:
        ingest_dataset(name, dict(cfg["datasets"][name]), data_cfg, root / "data" / name, seed=cfg["seed"])
    torch.set_num_threads(1)  # one thread: fastest for this tiny model on a shared machine
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


def _test_dice(model: torch.nn.Module, root: Path, dataset: str) -> float:
    return evaluate(model, load_split(root / "data" / dataset / "test.parquet"))[1]


@pytest.mark.slow
def test_pretrained_tiny_sam_reaches_the_dice_bar_on_its_own_datasets(
    demo: tuple[dict, Path, list[str]],
) -> None:
    _, root, names = demo
    model = build_model("tiny_sam", checkpoint=root / "pretrained.safetensors")
    per_dataset = {name: round(_test_dice(model, root, name), 3) for name in names}
    print(f"tiny-SAM clean test Dice per pretraining dataset {per_dataset}")
    assert sum(per_dataset.values()) / len(per_dataset) >= DICE_BAR


@pytest.mark.slow
def test_fine_tuning_on_a_held_out_modality_gains_clearly_over_zero_shot(
    demo: tuple[dict, Path, list[str]], tmp_path: Path
) -> None:
    cfg, root, _ = demo
    base = root / "pretrained.safetensors"
    zero_shot = _test_dice(build_model("tiny_sam", checkpoint=base), root, HELD_OUT)
    assert zero_shot < ZERO_SHOT_CEILING
    for strategy in STRATEGIES:
        out = tmp_path / f"{strategy}.safetensors"
        finetune_run(
            model_name="tiny_sam",
            base_checkpoint=base,
            dataset=HELD_OUT,
            strategy=strategy,
            train_shard=root / "data" / HELD_OUT / "train.parquet",
            val_shard=root / "data" / HELD_OUT / "val.parquet",
            checkpoint_out=out,
            log_csv=tmp_path / f"{strategy}.csv",
            curve_png=tmp_path / f"{strategy}.png",
            settings=ft_cfg.run_settings(cfg["finetune"], "tiny_sam", strategy),
            global_seed=cfg["seed"],
            device="cpu",
            progress=False,
        )
        tuned = _test_dice(load_for_eval("tiny_sam", base, out, strategy, device="cpu"), root, HELD_OUT)
        print(f"{HELD_OUT}/{strategy}: clean test Dice zero-shot {zero_shot:.3f} -> {tuned:.3f}")
        assert tuned - zero_shot > MIN_GAIN, (strategy, zero_shot, tuned)
