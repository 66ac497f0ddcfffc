"""Segmentation evaluation: metric conventions, prompts, shard alignment, embedding cache and attacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_seg_support import SMALL, ellipse_sample, trained_small_sam, write_perturbed_shard, write_test_shard

from medfm_robust.boxes import require_box
from medfm_robust.errors import ConfigError, DataError
from medfm_robust.metrics import segmentation as S
from medfm_robust.seg.attacks import AttackSettings, quantize, run_attack
from medfm_robust.seg.cache import EmbeddingEncoder
from medfm_robust.seg.evaluate import (
    METRIC_COLUMNS,
    EvalSettings,
    RunIdentity,
    attack_settings,
    eval_settings,
    evaluate_attacks,
    evaluate_dataset,
    select_image_ids,
)
from medfm_robust.seg.models import build_tiny_sam, images_to_batch
from medfm_robust.seg.prompts import BoxJitter, jitter_box, prompt_box

RUN = RunIdentity("tiny_sam", "zero_shot", None)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- metrics


def test_metrics_hand_computed_squares() -> None:
    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True  # 25 px
    b = np.zeros_like(a)
    b[6:11, 5:10] = True  # shifted down by one: 20 px overlap
    assert S.iou(a, b) == pytest.approx(20 / 30)
    assert S.dice(a, b) == pytest.approx(40 / 50)
    assert S.hd95(a, b) == pytest.approx(1.0)
    assert S.normalized_surface_dice(a, b, tolerance=2.0) == 1.0
    far = np.zeros_like(a)
    far[5:10, 15:20] = True  # 10 px to the right
    assert S.iou(a, far) == 0.0 and S.dice(a, far) == 0.0
    assert S.hd95(a, far) == pytest.approx(10.0)
    assert S.normalized_surface_dice(a, far, tolerance=2.0) == 0.0


def test_metric_empty_mask_conventions() -> None:
    empty = np.zeros((8, 8), np.uint8)
    some = empty.copy()
    some[2:4, 2:4] = 255
    assert S.segmentation_scores(empty, empty) == {"iou": 1.0, "dice": 1.0, "nsd": 1.0, "hd95": 0.0}
    one = S.segmentation_scores(some, empty)
    assert one["iou"] == 0.0 and one["dice"] == 0.0 and one["nsd"] == 0.0 and np.isnan(one["hd95"])
    with pytest.raises(DataError, match="one shape"):
        S.dice(np.zeros((4, 4)), np.zeros((4, 5)))


def test_surface_distances_equal_full_image_transforms() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(10):
        a = ndimage.gaussian_filter(rng.random((64, 64)), 4) > 0.52
        b = ndimage.gaussian_filter(rng.random((64, 64)), 4) > 0.52
        b[:, :2] = True  # touches the image edge
        if not a.any():
            continue
        sa, sb = S.surface(a), S.surface(b)
        ref = sorted(ndimage.distance_transform_edt(~sb)[sa]), sorted(ndimage.distance_transform_edt(~sa)[sb])
        got = S.surface_distances(a, b)
        assert np.array_equal(ref[0], np.sort(got[0])) and np.array_equal(ref[1], np.sort(got[1]))


# ---------------------------------------------------------------------------------------------- prompts


def test_box_from_mask_is_tight_and_inclusive() -> None:
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 3:9] = 1
    m[7, 10] = 1  # a second component shares the box
    assert require_box(m).tolist() == [3, 2, 10, 7]
    with pytest.raises(DataError, match="empty mask"):
        require_box(np.zeros((3, 3)))


def test_box_jitter_is_seeded_by_identity_and_clamped() -> None:
    m = np.zeros((32, 32), bool)
    m[10:20, 5:15] = True
    assert prompt_box(m, BoxJitter(0.0), "d", "a").tolist() == [5, 10, 14, 19]
    j1 = prompt_box(m, BoxJitter(0.2, seed=3), "d", "a")
    assert np.array_equal(j1, prompt_box(m, BoxJitter(0.2, seed=3), "d", "a"))
    assert not np.array_equal(j1, prompt_box(m, BoxJitter(0.2, seed=3), "d", "b"))
    assert not np.array_equal(j1, prompt_box(m, BoxJitter(0.2, seed=4), "d", "a"))
    assert np.all(np.abs(j1 - [5, 10, 14, 19]) <= 0.2 * 10 + 1e-9)
    edge = jitter_box(np.array([0, 0, 31, 31]), (32, 32), BoxJitter(0.5, seed=1), "d", "x")
    assert edge.min() >= 0 and edge.max() <= 31 and edge[2] >= edge[0] and edge[3] >= edge[1]


# ---------------------------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("seg_shards")
    write_test_shard(d / "test.parquet", "demo", 6)
    write_perturbed_shard(d / "noise.parquet", "demo", "noise", 6, skip={"img005"})
    write_perturbed_shard(d / "shift.parquet", "demo", "shift", 6, moving=True, skip={"img005"})
    return {"test": d / "test.parquet", "noise": d / "noise.parquet", "shift": d / "shift.parquet", "dir": d}


def _outputs(d: Path, names: list[str]) -> dict[str, Path]:
    return {n: d / f"{n}.parquet" for n in names}


def test_perturbed_rows_line_up_with_shard_rows(shards: dict[str, Path], tmp_path: Path) -> None:
    model = trained_small_sam()
    out = _outputs(tmp_path, ["clean", "noise", "shift"])
    perturbed = {"noise": shards["noise"], "shift": shards["shift"]}
    counts = evaluate_dataset(
        RUN, "demo", shards["test"], perturbed, out, EvalSettings(batch_size=4), model=model
    )
    assert counts["clean"] == 6 and counts["noise"] == 15 and counts["shift"] == 15
    assert counts["encoder_passes"] == 6 + 15 + 15  # every distinct image encoded exactly once

    clean = pd.read_parquet(out["clean"])
    assert list(clean.columns) == list(METRIC_COLUMNS)
    assert clean["image_id"].tolist() == [f"img{i:03d}" for i in range(6)]
    assert (
        (clean["level"] == 0).all() and (clean["category"] == "clean").all() and (clean["ssim"] == 1.0).all()
    )
    assert clean["dice"].mean() > 0.8
    for name in ("noise", "shift"):
        rows = pd.read_parquet(out[name])
        shard = pd.read_parquet(shards[name])
        assert rows[["image_id", "level"]].values.tolist() == shard[["image_id", "level"]].values.tolist()
        assert rows["ssim"].tolist() == shard["ssim"].tolist()
        assert rows["in_band"].tolist() == shard["in_band"].tolist()
        # the reachability certificate travels: only the level-3 rows are flagged unreachable
        assert rows["reachable"].tolist() == (shard["level"] != 3).tolist()
        assert (rows["category"] == "base").all() and (rows["perturbation"] == name).all()
        assert rows["level"].dtype == np.int8 and rows["checkpoint_hash"].eq("test-small-sam").all()

    # A moved image is scored against its moved mask with its moved box (recomputed here by hand).
    shift = pd.read_parquet(out["shift"])
    from medfm_robust.io import decode_png

    row = pd.read_parquet(shards["shift"]).iloc[4]
    img, gt = decode_png(row["image_png"]), decode_png(row["mask_png"]) > 0
    with torch.no_grad():
        pred = model(images_to_batch([img]), torch.tensor([list(row["box"])], dtype=torch.float32))[0, 0] > 0
    expected = S.segmentation_scores(pred.numpy(), gt)
    got = shift.iloc[4]
    assert got["image_id"] == row["image_id"] and got["level"] == row["level"]
    assert got["dice"] == pytest.approx(expected["dice"]) and got["hd95"] == pytest.approx(expected["hd95"])


def test_subset_selection_prefers_perturbed_images(shards: dict[str, Path]) -> None:
    ids = select_image_ids(shards["test"], [shards["noise"]], None)
    assert ids == ["img000", "img001", "img002", "img003", "img004", "img005"]
    assert select_image_ids(shards["test"], [shards["noise"]], 2) == ["img000", "img001"]
    d = shards["dir"]
    write_test_shard(d / "test_small.parquet", "demo", 3)
    with pytest.raises(DataError, match=r"noise\.parquet: rows for image\(s\) not in the test shard"):
        select_image_ids(d / "test_small.parquet", [shards["noise"]], None)


def test_inconsistent_inputs_fail_with_file_and_image(shards: dict[str, Path], tmp_path: Path) -> None:
    model = trained_small_sam()
    bad = pd.read_parquet(shards["noise"])
    bad.loc[3, "box"] = np.array([0, 0, 5, 5], dtype=np.int32)
    write_path = tmp_path / "bad.parquet"
    bad.to_parquet(write_path)
    out = _outputs(tmp_path, ["clean", "noise"])
    with pytest.raises(
        DataError, match=r"bad\.parquet \[img001 level 1\]: box .* differs from the clean box"
    ):
        evaluate_dataset(RUN, "demo", shards["test"], {"noise": write_path}, out, EvalSettings(), model=model)
    with pytest.raises(DataError, match="must be exactly"):
        evaluate_dataset(
            RUN,
            "demo",
            shards["test"],
            {"noise": write_path},
            {"clean": out["clean"]},
            EvalSettings(),
            model=model,
        )


def test_embedding_cache_returns_identical_results(shards: dict[str, Path], tmp_path: Path) -> None:
    model = trained_small_sam()
    perturbed = {"noise": shards["noise"]}
    runs = {}
    for name, cache in (("plain", None), ("fill", tmp_path / "cache"), ("hit", tmp_path / "cache")):
        out = _outputs(tmp_path / name, ["clean", "noise"])
        settings = EvalSettings(batch_size=5, cache_dir=None if cache is None else str(cache))
        runs[name] = evaluate_dataset(RUN, "demo", shards["test"], perturbed, out, settings, model=model)
        runs[name + "_frames"] = [pd.read_parquet(p) for p in out.values()]
    assert runs["fill"]["encoder_passes"] == 21 and runs["hit"]["encoder_passes"] == 0
    assert runs["hit"]["cache_hits"] == 21
    for a, b in zip(runs["plain_frames"], runs["hit_frames"], strict=True):
        pd.testing.assert_frame_equal(a, b)

    # A strategy with the same (frozen) encoder but another decoder hits the same entries; embeddings
    # read back are bit-identical to a fresh encoder pass.
    other = build_tiny_sam(SMALL)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.mask_decoder.iou_token.weight.add_(1.0)
    enc = EmbeddingEncoder(other.eval(), tmp_path / "cache")
    imgs = [ellipse_sample(i)[0] for i in range(3)]
    from medfm_robust.io import array_hash

    x = images_to_batch(imgs)
    got = enc.encode(x, [array_hash(i) for i in imgs])
    assert enc.stats.cache_hits == 3 and enc.stats.encoded == 0
    with torch.no_grad():
        assert torch.equal(got, other.encode(x))
    changed = build_tiny_sam(SMALL)
    assert EmbeddingEncoder(changed, tmp_path / "cache").encoder_hash != enc.encoder_hash


# ---------------------------------------------------------------------------------------------- attacks


def test_attacks_stay_in_budget_quantised_and_seeded() -> None:
    model = trained_small_sam()
    data = [ellipse_sample(i) for i in range(4)]
    x = images_to_batch([d[0] for d in data])
    gt = torch.from_numpy(np.stack([d[1] for d in data])[:, None])
    boxes = torch.from_numpy(np.stack([require_box(d[1]) for d in data]).astype(np.float32))
    keys = [("demo", f"img{i}") for i in range(4)]
    settings = AttackSettings()
    for attack in ("fgsm", "pgd"):
        adv = run_attack(model, attack, 3, settings, x, boxes, gt, keys, seed=0)
        assert (adv - x).abs().max() <= 6 / 255 + 1e-6
        assert torch.equal(adv, quantize(adv)) and adv.min() >= 0 and adv.max() <= 1
    a = run_attack(model, "pgd", 2, settings, x, boxes, gt, keys, seed=0)
    assert torch.equal(a, run_attack(model, "pgd", 2, settings, x, boxes, gt, keys, seed=0))
    assert not torch.equal(a, run_attack(model, "pgd", 2, settings, x, boxes, gt, keys, seed=1))
    assert settings.step_size("pgd", 5) == pytest.approx(2.5 * (10 / 255) / 15)
    model.train()
    try:
        with pytest.raises(RuntimeError, match="eval"):
            run_attack(model, "fgsm", 1, settings, x, boxes, gt, keys, seed=0)
    finally:
        model.eval()
    with pytest.raises(ConfigError, match="unknown attack"):
        run_attack(model, "cw", 1, settings, x, boxes, gt, keys, seed=0)


def test_fgsm_and_pgd_lower_dice_monotonically_with_epsilon(shards: dict[str, Path], tmp_path: Path) -> None:
    model = trained_small_sam()
    out = _outputs(tmp_path, ["fgsm", "pgd"])
    evaluate_dataset(
        RUN, "demo", shards["test"], {}, {"clean": tmp_path / "clean.parquet"}, EvalSettings(), model=model
    )
    clean = pd.read_parquet(tmp_path / "clean.parquet")["dice"].mean()
    counts = evaluate_attacks(
        RUN, "demo", shards["test"], [], out, EvalSettings(batch_size=6), AttackSettings(), model=model
    )
    assert counts == {"fgsm": 30, "pgd": 30}
    for name in ("fgsm", "pgd"):
        rows = pd.read_parquet(out[name])
        assert list(rows.columns) == list(METRIC_COLUMNS)
        assert (rows["category"] == "adversarial").all() and sorted(rows["level"].unique()) == [1, 2, 3, 4, 5]
        dice = rows.groupby("level")["dice"].mean().to_numpy()
        ssim = rows.groupby("level")["ssim"].mean().to_numpy()
        assert np.all(np.diff(dice) < 0), (name, dice)
        assert dice[0] < clean and dice[-1] < clean - 0.05
        assert np.all(np.diff(ssim) < 0) and ssim[0] < 1.0


def test_settings_from_params() -> None:
    params = {
        "checkpoint": None,
        "batch_size": 3,
        "max_images": 2,
        "attack_max_images": 1,
        "cache_dir": None,
        "device": "cpu",
        "threads": 1,
        "box_jitter": 0.1,
        "nsd_tolerance": 1.5,
        "seed": 4,
    }
    s = eval_settings(params)
    assert s.batch_size == 3 and s.jitter == BoxJitter(0.1, 4) and s.attack_max_images == 1
    a = attack_settings(
        {
            "epsilons": [1, 2],
            "pgd_steps": [2, 4],
            "pgd_step_factor": 2.0,
            "random_start": False,
            "quantize_bits": 8,
        }
    )
    assert a.levels == (1, 2) and a.eps(2) == pytest.approx(2 / 255) and a.steps("pgd", 2) == 4
    with pytest.raises(ConfigError, match="one entry per level"):
        AttackSettings(epsilons=(1.0,), pgd_steps=(1, 2))


def test_evaluation_job_writes_every_condition_to_one_file(
    shards: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    import medfm_robust.seg.evaluate as E

    model = trained_small_sam()
    loads = []

    def fake_prepare(run, settings, net):
        if net is None:  # a real load (not a model handed on)
            loads.append(run.finetuned)
        return model, torch.device("cpu")

    monkeypatch.setattr(E, "prepare_model", fake_prepare)
    out = tmp_path / "zero_shot.parquet"
    plan = {
        "dataset": "demo",
        "test": shards["test"],
        "shards": {"shift": shards["shift"], "noise": shards["noise"]},
        "finetuned": None,
        "attacks": True,
        "output": str(out),
    }
    settings = {
        "checkpoint": None,
        "batch_size": 8,
        "max_images": 2,
        "attack_max_images": 1,
        "cache_dir": None,
        "device": "cpu",
        "threads": 1,
        "box_jitter": 0.0,
        "nsd_tolerance": 2.0,
        "seed": 0,
    }
    attack = {
        "epsilons": [2, 4],
        "pgd_steps": [2, 3],
        "pgd_step_factor": 2.5,
        "random_start": True,
        "quantize_bits": 8,
    }
    counts = E.run_evaluation_job("tiny_sam", "zero_shot", plan, settings, attack)
    assert loads == [None]  # the model is loaded once, for the evaluation and the attacks
    assert counts == {"clean": 2, "fgsm": 2, "noise": 6, "pgd": 2, "shift": 6}  # attacks: 1 image x 2 levels
    rows = pd.read_parquet(out)
    # every condition's rows, in name order, as the separate evaluations score them
    assert list(dict.fromkeys(rows["perturbation"])) == ["clean", "fgsm", "noise", "pgd", "shift"]
    assert rows["perturbation"].value_counts().to_dict() == counts
    assert rows["train_seed"].eq(0).all()  # zero_shot is not trained: seed 0
    separate = tmp_path / "separate"
    names = ["clean", "noise", "shift"]
    E.evaluate_dataset(
        E.RunIdentity("tiny_sam", "zero_shot", None, None),
        "demo",
        shards["test"],
        plan["shards"],
        {n: separate / f"{n}.parquet" for n in names},
        E.eval_settings(settings),
        model=model,
    )
    for n in names:
        got = rows[rows["perturbation"] == n].reset_index(drop=True)
        assert got.equals(pd.read_parquet(separate / f"{n}.parquet")), n
    # a trained strategy's checkpoint of training seed 2, attacks off: every row says so
    seeded = tmp_path / "seed2.parquet"
    trained = {**plan, "finetuned": "lora/seed2.safetensors", "attacks": False, "output": str(seeded)}
    E.run_evaluation_job("tiny_sam", "lora", trained, settings, None, train_seed=2)
    assert loads[-1] == "lora/seed2.safetensors"
    seeded_rows = pd.read_parquet(seeded)
    assert set(seeded_rows["perturbation"]) == {"clean", "noise", "shift"}
    assert seeded_rows["train_seed"].eq(2).all() and seeded_rows["train_seed"].dtype == "int64"
    assert seeded_rows.drop(columns=["strategy", "train_seed"]).equals(
        rows[~rows["perturbation"].isin(["fgsm", "pgd"])]
        .reset_index(drop=True)
        .drop(columns=["strategy", "train_seed"])
    )
    with pytest.raises(DataError, match="needs a fine-tuned checkpoint"):
        E.run_evaluation_job("tiny_sam", "lora", plan, settings, attack)


def test_label_moved_out_of_the_image_is_not_scored(shards: dict[str, Path], tmp_path: Path) -> None:
    from medfm_robust.io import encode_png

    model = trained_small_sam()
    table = pd.read_parquet(shards["shift"])
    table["box"] = table["box"].astype(object)
    table.at[2, "box"] = None
    table.at[2, "mask_png"] = encode_png(np.zeros((64, 64), np.uint8))
    gone = tmp_path / "gone.parquet"
    table.to_parquet(gone)
    out = _outputs(tmp_path, ["clean", "shift"])
    counts = evaluate_dataset(RUN, "demo", shards["test"], {"shift": gone}, out, EvalSettings(), model=model)
    assert counts["shift"] == len(table) - 1
    rows = pd.read_parquet(out["shift"])
    assert (rows["image_id"] + rows["level"].astype(str)).tolist() == [
        i + str(lv) for k, (i, lv) in enumerate(zip(table["image_id"], table["level"], strict=True)) if k != 2
    ]
    table.at[2, "mask_png"] = table.at[3, "mask_png"]
    table.to_parquet(gone)
    with pytest.raises(DataError, match="null box without an empty moved mask"):
        evaluate_dataset(RUN, "demo", shards["test"], {"shift": gone}, out, EvalSettings(), model=model)
