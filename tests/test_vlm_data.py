"""VLM dataset adapters on tiny copies of the publishers' layouts, the demo builder and sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medfm_robust.errors import ConfigError, DataError
from medfm_robust.io import decode_png, encode_png, write_parquet_atomic
from medfm_robust.vlm.datasets import (
    SAMPLE_COLUMNS,
    build_demo,
    build_sample_table,
    detect_box_format,
    map_modality,
    normalise_box,
    read_mecovqa,
    read_omnimedvqa,
    read_rocov2,
    read_samples,
    stratified_sample,
    write_samples,
)
from medfm_robust.vlm.prompts import build_prompt, target_text


def _img(path: Path, h: int = 20, w: int = 30, rgb: bool = True, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((h, w, 3) if rgb else (h, w), value, np.uint8)
    arr[..., :] += np.arange(w, dtype=np.uint8)[None, :, None] if rgb else np.arange(w, dtype=np.uint8)[None]
    Image.fromarray(arr).save(path)


# ------------------------------------------------------------------------------------------ modality map


@pytest.mark.parametrize(("label", "modality"), [
    ("CT(Computed Tomography)", "ct"),
    ("MR (Mag-netic Resonance Imaging)", "mri"),
    ("X-Ray", "xray"),
    ("ultrasound", "ultrasound"),
    ("Dermoscopy", "dermoscopy"),
    ("Fundus Photography", "fundus"),
    ("OCT (Optical Coherence Tomography", "oct"),
    ("Microscopy Images", "pathology"),
    ("Endoscopy", "endoscopy"),
    ("Angiography", "angiography"),
])
def test_omnimedvqa_modality_labels(label: str, modality: str) -> None:
    assert map_modality(label) == modality


def test_unknown_modality_fails_loudly() -> None:
    with pytest.raises(DataError, match=r"x\.json\[3\]: unknown modality label 'PET \(Positron\)'"):
        map_modality("PET (Positron)", where="x.json[3]")
    assert map_modality("PET (Positron)", extra={"PET": "ct"}) == "ct"
    with pytest.raises(ConfigError):
        map_modality("PET", extra={"PET": "nuclear"})


# ------------------------------------------------------------------------------------------ OmniMedVQA


def _omni(root: Path, items: list[dict]) -> None:
    qa = root / "QA_information" / "Open-access"
    qa.mkdir(parents=True)
    (qa / "Demo Set.json").write_text(json.dumps(items))
    for it in items:
        _img(root / it["image_path"].replace("${dataset_root_path}/", ""))


OMNI = [
    {"dataset": "Demo Set", "question_id": "q1", "question_type": "Modality Recognition",
     "question": "What modality is this?", "gt_answer": "CT", "image_path": "Images/Demo/a.png",
     "option_A": "MRI", "option_B": "CT", "option_C": "X-ray", "option_D": "PET",
     "modality_type": "CT(Computed Tomography)"},
    {"dataset": "Demo Set", "question_id": "q2", "question_type": "Anatomy Identification",
     "question": "Which organ?", "gt_answer": "Retina",
     "image_path": "${dataset_root_path}/Images/Demo/b.png",
     "option_A": "Retina", "option_B": "Liver", "modality_type": "Fundus Photography"},
    {"dataset": "Demo Set", "question_id": "q3", "question_type": "Lesion Grading",
     "question": "Grade?", "gt_answer": "grade 2", "image_path": "Images/Demo/a.png",
     "option_A": "grade 1", "option_B": "grade 2", "option_C": "grade 3",
     "modality": "MR (Mag-netic Resonance Imaging)"},  # one published file spells the field like this
]


def test_read_omnimedvqa(tmp_path: Path) -> None:
    _omni(tmp_path, OMNI)
    df = read_omnimedvqa(tmp_path, dataset="omni")
    assert list(df.columns) == list(SAMPLE_COLUMNS)
    rows = df.set_index("sample_id")
    assert rows.loc["q1", "options"] == ["MRI", "CT", "X-ray", "PET"] and rows.loc["q1", "answer"] == "B"
    assert rows.loc["q2", "options"] == ["Retina", "Liver"] and rows.loc["q2", "answer"] == "A"
    assert rows.loc["q3", "answer"] == "B" and rows.loc["q3", "reference"] == "grade 2"
    assert list(rows["modality"]) == ["ct", "fundus", "mri"]
    assert rows.loc["q1", "image_id"] == rows.loc["q3", "image_id"] == "Images/Demo/a.png"
    assert (rows["height"] == 20).all() and (rows["width"] == 30).all()
    assert decode_png(rows.loc["q1", "image_png"]).shape == (20, 30, 3)
    prompt = build_prompt("vqa", rows.loc["q1"].to_dict())
    assert "A. MRI\nB. CT\nC. X-ray\nD. PET" in prompt  # options are really shown (the original dropped them)


def test_omnimedvqa_errors_name_file_and_field(tmp_path: Path) -> None:
    bad = [dict(OMNI[0], modality_type="Nuclear medicine")]
    _omni(tmp_path / "a", bad)
    with pytest.raises(DataError, match=r"Demo Set\.json\[0\]\.modality_type.*Nuclear medicine"):
        read_omnimedvqa(tmp_path / "a")
    _omni(tmp_path / "b", [dict(OMNI[0], gt_answer="Ultrasound")])
    with pytest.raises(DataError, match="gt_answer 'Ultrasound'"):
        read_omnimedvqa(tmp_path / "b")
    _omni(tmp_path / "c", [OMNI[0]])
    (tmp_path / "c" / "Images" / "Demo" / "a.png").unlink()
    with pytest.raises(DataError, match=r"image file .*a\.png not found"):
        read_omnimedvqa(tmp_path / "c")
    with pytest.raises(DataError, match="no usable"):
        read_omnimedvqa(tmp_path / "c", on_missing="skip")


# ---------------------------------------------------------------------------------------------- ROCOv2


def _roco(root: Path, with_concepts: bool = True) -> None:
    root.mkdir(parents=True)
    (root / "test_captions.csv").write_text(
        'ID,Caption\nROCOv2_2023_test_000001,"Axial CT scan  showing a mass."\n'
        "ROCOv2_2023_test_000002,Chest X-ray with cardiomegaly.\n"
    )
    if with_concepts:
        (root / "test_concepts_manual.csv").write_text(
            "ID,CUIs\nROCOv2_2023_test_000001,C0040405;C0817096\nROCOv2_2023_test_000002,C1306645;C0817096\n"
        )
    for i in (1, 2):
        _img(root / "test" / f"ROCOv2_2023_test_00000{i}.jpg", rgb=False)


def test_read_rocov2(tmp_path: Path) -> None:
    _roco(tmp_path / "r")
    df = read_rocov2(tmp_path / "r", dataset="roco")
    assert list(df["modality"]) == ["ct", "xray"]
    assert df.loc[0, "reference"] == "Axial CT scan showing a mass." and df.loc[0, "split"] == "test"
    assert df.loc[0, "question"].startswith("Describe")
    _roco(tmp_path / "n", with_concepts=False)
    with pytest.raises(ConfigError, match="modality"):
        read_rocov2(tmp_path / "n")
    assert set(read_rocov2(tmp_path / "n", modality="xray")["modality"]) == {"xray"}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "test_captions.csv").write_text("image,text\nx,y\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['ID', 'Caption'\]"):
        read_rocov2(tmp_path / "bad", modality="ct")


def test_read_rocov2_hugging_face_layout(tmp_path: Path) -> None:
    root = tmp_path / "hf"
    (root / "data").mkdir(parents=True)
    img = encode_png(np.full((12, 16), 90, np.uint8))
    pd.DataFrame({"image": [{"bytes": img, "path": None}] * 2, "image_id": ["a", "b"],
                  "caption": ["MRI of the knee.", "Ultrasound of the liver."],
                  "cui": [["C0024485"], ["C0041618", "C0023884"]]}).to_parquet(
        root / "data" / "test-00000.parquet")
    df = read_rocov2(root)
    assert list(df["modality"]) == ["mri", "ultrasound"] and list(df["height"]) == [12, 12]
    with pytest.raises(DataError, match="validation-"):
        read_rocov2(root, split="val")


# --------------------------------------------------------------------------------------------- MeCoVQA


def test_box_conventions() -> None:
    assert normalise_box([3, 4, 10, 12], "xyxy_pixel", 30, 20, where="w") == [3, 4, 10, 12]
    assert normalise_box([3, 4, 8, 9], "xywh_pixel", 30, 20, where="w") == [3, 4, 10, 12]
    assert normalise_box([0.1, 0.2, 0.5, 0.65], "xyxy_norm1", 30, 20, where="w") == [3, 4, 14, 12]
    assert normalise_box([100, 200, 500, 650], "xyxy_norm1000", 30, 20, where="w") == [3, 4, 14, 12]
    with pytest.raises(DataError, match="w: box"):
        normalise_box([10, 4, 3, 12], "xyxy_pixel", 30, 20, where="w")
    assert detect_box_format([[0.1, 0.2, 0.5, 0.6]], [(20, 30)]) == "xyxy_norm1"
    assert detect_box_format([[100, 200, 500, 650]], [(20, 30)]) == "xyxy_norm1000"
    assert detect_box_format([[3, 4, 10, 12]], [(20, 30)]) == "xyxy_pixel"


def test_read_mecovqa_flat_conversation_and_mask_records(tmp_path: Path) -> None:
    root = tmp_path / "m"
    for name in ("ct_00--A--x.png", "mr_00--B--y.png", "other.png"):
        _img(root / "images" / name)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:9, 10:21] = 255
    (root / "masks").mkdir()
    Image.fromarray(mask).save(root / "masks" / "m.png")
    test = [
        {"id": "t1", "image": "images/ct_00--A--x.png", "question": "<image>\nWhere is the liver?",
         "box": [0.1, 0.2, 0.5, 0.65]},
        {"id": "t2", "image": "images/mr_00--B--y.png",
         "conversations": [{"from": "human", "value": "<im_start><image><im_end>\nFind the tumour."},
                           {"from": "gpt", "value": "[0.2, 0.25, 0.4, 0.5]"}]},
        {"id": "t3", "image": "images/other.png", "modality": "Ultrasound", "question": "Find it.",
         "conversations": [{"from": "human", "value": "x"},
                           {"from": "gpt", "value": "It is <SEG>.<mask>masks/m.png</mask>"}]},
    ]
    (root / "test.json").write_text(json.dumps(test))
    (root / "train.json").write_text(json.dumps([{"id": "r1", "image": "images/other.png", "question": "Q",
                                                  "bbox": [1, 2, 3, 4], "modality": "CT"}]))
    df = read_mecovqa(root, dataset="meco", files={"test": "test.json"}).set_index("sample_id")
    assert df.loc["t1", "box"] == [3, 4, 14, 12] and df.loc["t1", "question"] == "Where is the liver?"
    assert df.loc["t2", "box"] == [6, 5, 11, 9] and df.loc["t2", "question"] == "Find the tumour."
    assert df.loc["t3", "box"] == [10, 5, 20, 8] and df.loc["t3", "mask_png"] is not None
    assert list(df["modality"]) == ["ct", "mri", "ultrasound"]
    assert target_text("grounding", df.loc["t1"].to_dict(), "pixel") == "[3, 4, 14, 12]"
    both = read_mecovqa(root, files={"test": "test.json", "train": "train.json"}, box_format="xyxy_pixel")
    assert set(both["split"]) == {"train", "test"} and "train/r1" in set(both["sample_id"])
    nomod = [{"image": "images/other.png", "question": "Q", "box": [1, 1, 2, 2]}]
    (root / "nomod.json").write_text(json.dumps(nomod))
    with pytest.raises(DataError, match=r"nomod\.json\[0\]: no modality"):
        read_mecovqa(root, files={"test": "nomod.json"})


# -------------------------------------------------------------------------------------------- sampling


def _pool(n_ct: int = 60, n_mri: int = 30, n_xray: int = 10) -> pd.DataFrame:
    rows = [{"sample_id": f"{m}{i:03d}", "modality": m, "split": "test"}
            for m, n in (("ct", n_ct), ("mri", n_mri), ("xray", n_xray)) for i in range(n)]
    return pd.DataFrame(rows)


def test_stratified_sampling_is_deterministic_order_free_and_proportional() -> None:
    pool = _pool()
    a = stratified_sample(pool, 20, key=("d", "vqa"), seed=0)
    b = stratified_sample(pool.sample(frac=1.0, random_state=3), 20, key=("d", "vqa"), seed=0)
    assert list(a["sample_id"]) == list(b["sample_id"])
    assert a.groupby("modality").size().to_dict() == {"ct": 12, "mri": 6, "xray": 2}
    c = stratified_sample(pool, 20, key=("d", "vqa"), seed=1)
    assert list(a["sample_id"]) != list(c["sample_id"])
    small = stratified_sample(_pool(60, 30, 1), 5, key=("d",), seed=0)
    assert len(small) == 5 and "xray" in set(small["modality"])  # every stratum is represented
    assert len(stratified_sample(pool, None, key=("d",), seed=0)) == 100
    bigger = stratified_sample(pool, 40, key=("d", "vqa"), seed=0)
    assert set(a["sample_id"]) <= set(bigger["sample_id"])  # a smaller draw nests in a larger one


# ------------------------------------------------------------------------------------------------ demo


def _canonical(tmp_path: Path, dataset: str, modality: str, split: str, n: int) -> Path:
    rows = []
    for i in range(n):
        img = np.full((64, 64), 40 + i, np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        x0 = 4 if i % 2 == 0 else 40
        mask[10:10 + 4 + 3 * i, x0:x0 + 12] = 255
        img[mask > 0] = 200
        rows.append({"image_id": f"{dataset}_{split}{i:02d}", "dataset": dataset, "modality": modality,
                     "split": split, "image_png": encode_png(img), "mask_png": encode_png(mask), "box": None,
                     "height": 64, "width": 64, "channels": 1, "source": "synthetic"})
    path = tmp_path / dataset / f"{split}.parquet"
    write_parquet_atomic(path, pd.DataFrame(rows))
    return path


def test_demo_builder_vqa_caption_grounding(tmp_path: Path) -> None:
    shards = [_canonical(tmp_path, "demo_ct", "ct", s, n) for s, n in (("train", 6), ("test", 3))]
    shards.append(_canonical(tmp_path, "demo_dermoscopy", "dermoscopy", "test", 2))
    vqa = build_demo(shards, dataset="demo", task="vqa", seed=0, showcase=False)
    assert set(vqa["question_type"]) == {"modality", "organ", "side", "size"}
    assert len(vqa) == 4 * 11 and set(vqa["split"]) == {"train", "test"}
    for rec in vqa.to_dict("records"):
        assert rec["options"][ord(rec["answer"]) - 65] == rec["reference"]
        assert len(set(rec["options"])) == len(rec["options"]) >= 3
    side = vqa[(vqa["question_type"] == "side")].set_index("image_id")
    assert side.loc["demo_ct/demo_ct_test00", "reference"] == "left"
    assert side.loc["demo_ct/demo_ct_test01", "reference"] == "right"
    organ = vqa[(vqa["question_type"] == "organ")].set_index("image_id")
    assert organ.loc["demo_dermoscopy/demo_dermoscopy_test00", "reference"] == "skin"
    # letters are spread over positions, not always A
    assert vqa["answer"].nunique() >= 3
    cap = build_demo(shards, dataset="demo", task="caption", seed=0, showcase=False)
    assert cap["reference"].str.contains("CT").sum() == 9 and cap["reference"].str.endswith(".").all()
    grd = build_demo(shards, dataset="demo", task="grounding", seed=0, showcase=False).set_index("sample_id")
    assert grd.loc["demo_ct/demo_ct_test01", "box"] == [40, 10, 51, 16]
    assert grd.loc["demo_ct/demo_ct_test01", "canonical_id"] == "demo_ct/demo_ct_test01"
    again = build_demo(list(reversed(shards)), dataset="demo", task="vqa", seed=0, showcase=False)
    pd.testing.assert_frame_equal(vqa, again)


def test_build_sample_table_writes_and_reads_with_sampling_and_showcase(tmp_path: Path) -> None:
    shards = [_canonical(tmp_path, "demo_ct", "ct", s, n) for s, n in (("train", 5), ("test", 6))]
    spec = {"adapter": "demo", "tasks": ["vqa", "caption"], "showcase": True}
    df = build_sample_table("demo", spec, "caption", sampling={"n_test": 4, "n_train": None}, seed=0,
                            shards=shards)
    test = df[df["split"] == "test"]
    assert len(test) == 4 and (df["split"] == "train").sum() == 5
    assert {"ct", "fundus", "pathology", "mri"} <= set(test["modality"])  # showcase strata kept
    retina = df[df["image_id"] == "showcase/retina"]
    if len(retina):
        assert max(decode_png(retina.iloc[0]["image_png"]).shape[:2]) <= 256
        assert retina.iloc[0]["canonical_id"] == ""
    write_samples(tmp_path / "out" / "caption.parquet", df)
    back = read_samples(tmp_path / "out" / "caption.parquet")
    pd.testing.assert_frame_equal(back.drop(columns=["options", "box"]), df.drop(columns=["options", "box"]))
    with pytest.raises(ConfigError, match="does not provide task 'grounding'"):
        build_sample_table("demo", spec, "grounding", sampling={}, seed=0, shards=shards)
    with pytest.raises(ConfigError, match="path"):
        build_sample_table("x", {"adapter": "rocov2"}, "caption", sampling={}, seed=0)


def test_demo_test_images_follow_the_perturbation_stage_selection(tmp_path: Path) -> None:
    from medfm_robust.perturb.table import select_images

    test_shard = _canonical(tmp_path, "demo_ct", "ct", "test", 6)
    train_shard = _canonical(tmp_path, "demo_ct", "ct", "train", 4)
    df = build_demo([test_shard, train_shard], dataset="demo", task="grounding", seed=5, showcase=False,
                    perturb_max_images=2)
    chosen = select_images(pd.read_parquet(test_shard), 2, global_seed=5)["image_id"]
    assert sorted(df.loc[df["split"] == "test", "canonical_id"]) == sorted(f"demo_ct/{i}" for i in chosen)
    assert (df["split"] == "train").sum() == 4  # training images are never restricted


def test_dataset_modalities_decide_the_perturbation_files() -> None:
    from medfm_robust.vlm.datasets import MODALITIES, dataset_modalities, demo_sources
    from medfm_robust.vlm.perturb import vlm_perturbations

    cfg = {"datasets": {"a": {"adapter": "demo", "modality": "dermoscopy"}, "b": {"adapter": "demo",
                                                                                  "modality": "xray"}}}
    assert demo_sources({"adapter": "demo"}, cfg) == ["a", "b"]
    assert dataset_modalities({"adapter": "demo", "sources": ["a"], "showcase": False}, cfg) == ["dermoscopy"]
    assert set(dataset_modalities({"adapter": "demo"}, cfg)) == {"dermoscopy", "xray", "ct", "fundus", "mri",
                                                                 "pathology"}
    assert dataset_modalities({"adapter": "rocov2"}, cfg) == list(MODALITIES)
    with pytest.raises(ConfigError, match="sources"):
        demo_sources({"adapter": "demo", "sources": ["zzz"]}, cfg)
    from medfm_robust.perturb import REGISTRY

    derm = vlm_perturbations(["dermoscopy"])
    assert {n for n, sp in REGISTRY.items() if sp.category == "base"} <= set(derm)
    assert all(REGISTRY[n].category == "base" or "dermoscopy" in REGISTRY[n].modalities for n in derm)
    assert set(vlm_perturbations(["dermoscopy", "xray"])) > set(derm)


def test_demo_max_test_images_from_the_dataset_spec(tmp_path: Path) -> None:
    shard = _canonical(tmp_path, "demo_ct", "ct", "test", 5)
    spec = {"adapter": "demo", "showcase": False, "max_test_images": 2}
    df = build_sample_table("demo", spec, "caption", sampling={"n_test": None}, seed=0, shards=[shard])
    assert len(df) == 2
    assert len(build_sample_table("demo", {**spec, "max_test_images": None}, "caption", sampling={}, seed=0,
                                  shards=[shard])) == 5
