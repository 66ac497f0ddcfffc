"""Perturbed VLM inputs: engine reuse, canonical-shard identity, boxes moving with label-moving types."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfm_robust.boxes import box_from_mask
from medfm_robust.errors import DataError
from medfm_robust.io import decode_png, encode_png, write_parquet_atomic
from medfm_robust.perturb.table import perturb_table, write_perturbed_shard
from medfm_robust.vlm.datasets import build_demo, to_frame, write_samples
from medfm_robust.vlm.perturb import conditions_for, perturb_vlm_dataset, perturbation_key, vlm_perturbations

LEVELS = (1, 5)


def _canonical(tmp_path: Path) -> Path:
    rows = []
    for i in range(2):
        yy, xx = np.mgrid[0:48, 0:48]
        img = (40 + xx + yy // 2 + 5 * i).astype(np.uint8)  # smooth: rotations need a visible angle
        mask = np.zeros((48, 48), np.uint8)
        mask[8 + 4 * i : 20 + 4 * i, 6:18] = 255
        img[mask > 0] += 100
        rows.append(
            {
                "image_id": f"img{i}",
                "dataset": "demo_ct",
                "modality": "ct",
                "split": "test",
                "image_png": encode_png(img),
                "mask_png": encode_png(mask),
                "box": [6, 8 + 4 * i, 17, 19 + 4 * i],
                "height": 48,
                "width": 48,
                "channels": 1,
                "source": "synthetic",
            }
        )
    path = tmp_path / "data" / "demo_ct" / "test.parquet"
    write_parquet_atomic(path, pd.DataFrame(rows))
    return path


def _own_grounding(tmp_path: Path) -> Path:
    img = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (32, 1))
    rows = [
        {
            "sample_id": f"g{i}",
            "dataset": "meco",
            "task": "grounding",
            "modality": "mri",
            "split": "test",
            "image_id": "shared.png",
            "image_png": encode_png(img),
            "height": 32,
            "width": 40,
            "question": "Find it.",
            "question_type": "grounding",
            "options": [],
            "answer": "",
            "reference": "",
            "box": box,
            "source": "x",
            "mask_png": None,
            "canonical_id": "",
        }
        for i, box in enumerate([[4, 4, 15, 11], [20, 15, 35, 27]])
    ]
    path = tmp_path / "vlm" / "meco" / "grounding.parquet"
    write_samples(path, to_frame(rows))
    return path


def test_keys() -> None:
    assert perturbation_key("vqa", {"sample_id": "s", "canonical_id": "demo_ct/img0"}) == ("demo_ct", "img0")
    own = {"sample_id": "s", "dataset": "d", "image_id": "a.png", "canonical_id": ""}
    assert perturbation_key("vqa", own) == ("d", "a.png")
    assert perturbation_key(
        "grounding", {"sample_id": "s", "dataset": "d", "image_id": "a.png", "canonical_id": ""}
    ) == ("d", "a.png|s")
    names = vlm_perturbations(["ct"])
    assert "gaussian_noise" in names and "rotation" in names and not any(n.startswith("mri") for n in names)


def test_demo_reuses_canonical_shards_and_moves_boxes(tmp_path: Path) -> None:
    shard = _canonical(tmp_path)
    vqa = build_demo([shard], dataset="demo", task="vqa", seed=0, showcase=False)
    grd = build_demo([shard], dataset="demo", task="grounding", seed=0, showcase=False)
    vdir = tmp_path / "vlm" / "demo"
    write_samples(vdir / "vqa.parquet", vqa)
    write_samples(vdir / "grounding.parquet", grd)
    canon = pd.read_parquet(shard)
    # The perturb stage's shard covers img0 only; img1 must be computed by the VLM job.
    canon_pert = perturb_table(canon[canon["image_id"] == "img0"], "rotation", levels=LEVELS, progress=False)
    cpath = tmp_path / "perturbed" / "demo_ct" / "rotation.parquet"
    write_perturbed_shard(cpath, canon_pert)
    outs = {
        "rotation": tmp_path / "out" / "rotation.parquet",
        "beam_hardening": tmp_path / "out" / "b.parquet",
    }
    counts = perturb_vlm_dataset(
        [vdir / "vqa.parquet", vdir / "grounding.parquet"],
        outs,
        canonical_shards={"rotation": [cpath]},
        levels=LEVELS,
        progress=False,
    )
    assert counts == {"rotation": 1, "beam_hardening": 2}  # img0's rotations came from the canonical shard
    cond = conditions_for(grd, "grounding", "rotation", [outs["rotation"], cpath], levels=LEVELS)
    assert len(cond) == 2 * len(LEVELS)
    full = perturb_table(canon, "rotation", levels=LEVELS, progress=False).set_index(["image_id", "level"])
    for rec in cond.to_dict("records"):
        ref = full.loc[(rec["canonical_id"].split("/")[1], rec["level"])]
        assert rec["image_png"] == ref["image_png"]  # byte-identical to the segmentation stage's image
        moved = decode_png(rec["mask_png"]) > 0
        assert rec["box"] == box_from_mask(moved) and rec["answer"] == str(rec["box"]).replace("'", "")
        assert rec["perturbation"] == "rotation" and rec["category"] == "base"
    orig = dict(zip(grd["sample_id"], grd["box"], strict=True))
    assert any(r["box"] != orig[r["sample_id"]] for r in cond.to_dict("records"))  # rotation moved a box
    vqa_cond = conditions_for(vqa, "vqa", "rotation", [outs["rotation"], cpath], levels=LEVELS)
    assert len(vqa_cond) == len(vqa) * len(LEVELS) and vqa_cond["ssim"].between(0, 1).all()
    with pytest.raises(DataError, match="no 'rotation' level 1 output"):
        conditions_for(vqa, "vqa", "rotation", [cpath], levels=LEVELS)


def test_own_grounding_samples_move_their_boxes(tmp_path: Path) -> None:
    path = _own_grounding(tmp_path)
    out = tmp_path / "out" / "translation.parquet"
    counts = perturb_vlm_dataset([path], {"translation": out}, levels=(5,), global_seed=3, progress=False)
    assert counts == {"translation": 2}
    samples = pd.read_parquet(path)
    cond = conditions_for(samples, "grounding", "translation", [out], levels=(5,))
    for rec, box in zip(cond.to_dict("records"), ([4, 4, 15, 11], [20, 15, 35, 27]), strict=True):
        w, h = box[2] - box[0], box[3] - box[1]
        nb = rec["box"]
        # a translated box keeps its size unless clipped at the border
        assert (nb[2] - nb[0] <= w and nb[3] - nb[1] <= h) and nb != box
    # Noise does not move labels: boxes unchanged, one draw per key.
    out2 = tmp_path / "out" / "gaussian_noise.parquet"
    perturb_vlm_dataset([path], {"gaussian_noise": out2}, levels=(1,), progress=False)
    c2 = conditions_for(samples, "grounding", "gaussian_noise", [out2], levels=(1,))
    assert [list(b) for b in c2["box"]] == [[4, 4, 15, 11], [20, 15, 35, 27]]
    assert c2["in_band"].all()


def test_write_conditions_one_file_per_type(tmp_path: Path) -> None:
    from medfm_robust.vlm.perturb import write_conditions

    path = _own_grounding(tmp_path)
    shard = tmp_path / "out" / "gaussian_noise.parquet"
    perturb_vlm_dataset(
        [path],
        {"gaussian_noise": shard, "hair": tmp_path / "out" / "hair.parquet"},
        levels=(2,),
        progress=False,
    )
    outs = {"gaussian_noise": tmp_path / "c" / "gn.parquet", "hair": tmp_path / "c" / "hair.parquet"}
    n = write_conditions(
        path,
        "grounding",
        outs,
        {"gaussian_noise": [shard], "hair": [tmp_path / "out" / "hair.parquet"]},
        levels=(2,),
    )
    assert n == {"gaussian_noise": 2, "hair": 0}  # hair is a dermoscopy type: no MRI sample gets it
    back = pd.read_parquet(outs["gaussian_noise"])
    assert list(back["level"]) == [2, 2] and set(back["perturbation"]) == {"gaussian_noise"}
    assert len(pd.read_parquet(outs["hair"])) == 0


def test_oracle_answers_score_perfectly_through_the_whole_data_path(tmp_path: Path) -> None:
    """samples -> perturbed shards -> conditions -> prompts/targets -> parsing -> metrics."""
    from medfm_robust.metrics.vlm import conditions_from, summarise
    from medfm_robust.vlm.prompts import build_prompt, target_text
    from medfm_robust.vlm.scoring import score_outputs

    shard = _canonical(tmp_path)
    vdir = tmp_path / "vlm" / "demo"
    tables = {}
    for task in ("vqa", "caption", "grounding"):
        tables[task] = build_demo([shard], dataset="demo", task=task, seed=0, showcase=False)
        write_samples(vdir / f"{task}.parquet", tables[task])
    outs = {"translation": tmp_path / "p" / "translation.parquet"}
    perturb_vlm_dataset([vdir / f"{t}.parquet" for t in tables], outs, levels=(4,), progress=False)
    for task, samples in tables.items():
        for convention in ("pixel", "norm1000"):
            cond = pd.concat(
                [
                    conditions_from(samples[samples["split"] == "test"]),
                    conditions_for(samples, task, "translation", [outs["translation"]], levels=(4,)),
                ],
                ignore_index=True,
            )
            oracle = [target_text(task, r, convention) for r in cond.to_dict("records")]
            assert all(build_prompt(task, r, convention) for r in cond.to_dict("records"))
            table = score_outputs(
                task, cond, oracle, model="oracle", model_revision="0", convention=convention
            )
            summ = summarise(table)
            assert (summ["parse_failures"] == 0).all() and set(summ["perturbation"]) == {
                "clean",
                "translation",
            }
            if task == "vqa":
                assert summ["accuracy"].eq(1.0).all()
            elif task == "caption":
                assert summ["bleu4"].gt(0.99).all()
            else:  # norm1000 rounding costs a little IoU, never a hit
                assert summ["acc_iou50"].eq(1.0).all() and summ["mean_iou"].gt(0.8).all()
