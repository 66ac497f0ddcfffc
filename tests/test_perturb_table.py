"""Perturbation tables, reports, contact sheets and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_perturb import shape_image, textured

from medfm_robust.boxes import box_from_mask
from medfm_robust.cli import main
from medfm_robust.errors import ConfigError
from medfm_robust.io import decode_png, encode_png, read_image
from medfm_robust.perturb import DEFAULT_BANDS, apply, calibrate
from medfm_robust.perturb.contact import write_contact_sheet
from medfm_robust.perturb.table import (
    PERTURBED_SCHEMA,
    calibration_report,
    perturb_table,
    reachable,
    select_images,
    write_calibration_report,
    write_perturbed_shard,
)


def canonical(n: int = 5, rgb: bool = False) -> pd.DataFrame:
    rows = []
    for i in range(n):
        img, mask = shape_image(64)
        img = np.roll(textured(64, rgb=rgb, seed=i), 0) if rgb else np.maximum(img, textured(64, seed=i) // 2)
        rows.append(
            {
                "image_id": f"img{i:02d}",
                "dataset": "toy",
                "modality": "dermoscopy",
                "split": "test",
                "image_png": encode_png(img),
                "mask_png": encode_png(mask),
                "box": box_from_mask(mask),
            }
        )
    return pd.DataFrame(rows)


def test_table_is_identical_under_shuffling_and_sharding() -> None:
    df = canonical(5)
    kw = {"levels": [1, 3, 5], "global_seed": 3, "progress": False}
    whole = perturb_table(df, "translation", **kw)
    shuffled = perturb_table(df.sample(frac=1, random_state=1), "translation", **kw)
    parts = pd.concat(
        [
            perturb_table(df.iloc[[4, 0]], "translation", **kw),
            perturb_table(df.iloc[[3, 1, 2]], "translation", **kw),
        ]
    )
    parts = parts.sort_values(["image_id", "level"]).reset_index(drop=True)
    for other in (shuffled, parts):
        assert list(other["image_id"]) == list(whole["image_id"])
        for col in ("image_png", "mask_png", "ssim", "param", "seed"):
            assert list(other[col]) == list(whole[col])
    assert list(whole.columns) == PERTURBED_SCHEMA.names
    assert whole["level"].tolist() == [1, 3, 5] * 5


def test_rows_regenerate_from_their_seed() -> None:
    df = canonical(2)
    out = perturb_table(df, "hair", levels=[2], progress=False)
    row = out.iloc[1]
    img = decode_png(df["image_png"].iloc[1])
    again = calibrate(img, "hair", 2, seed=int(row["seed"]))
    assert encode_png(again.image) == row["image_png"] and again.ssim == row["ssim"]
    assert encode_png(apply(img, "hair", float(row["param"]), seed=int(row["seed"]))[0]) == row["image_png"]
    assert row["mask_png"] is None  # intensity type: mask not repeated
    assert list(row["box"]) == list(df["box"].iloc[1])


def test_levels_of_an_image_share_seed_and_reachability_certificate() -> None:
    out = perturb_table(canonical(2), "light_reflection", global_seed=1, progress=False)
    for _, g in out.groupby("image_id"):
        assert g["seed"].nunique() == 1 and g["level"].tolist() == [1, 2, 3, 4, 5]
        assert g["ssim_min_reachable"].nunique() == 1 and g["ssim_max_reachable"].nunique() == 1
        assert (g["ssim_min_reachable"] <= g["ssim"]).all() and (g["ssim"] <= g["ssim_max_reachable"]).all()
        for r in g.itertuples():
            band = DEFAULT_BANDS[r.level - 1]
            if not reachable(band, r.ssim_min_reachable, r.ssim_max_reachable):
                assert not r.in_band and r.reason.startswith("unreachable")


def test_raw_16bit_rows_use_their_value_range() -> None:
    img = (textured(48, seed=2).astype(np.uint16) * 5).astype(np.uint16)  # values 0..1275 in uint16
    row = {"image_id": "a", "dataset": "raw", "modality": "mri", "image_png": encode_png(img)}
    default = perturb_table(pd.DataFrame([row]), "gaussian_noise", levels=[5], progress=False)
    wide = perturb_table(pd.DataFrame([{**row, "value_range": [0.0, 2550.0]}]), "gaussian_noise", levels=[5],
                         progress=False)  # fmt: skip
    # the same SSIM band needs twice the sigma (in fractions of the range) when white is at 1275
    assert default["in_band"].all() and wide["in_band"].all()
    assert 1.5 < default["param"].iloc[0] / wide["param"].iloc[0] < 2.5
    assert decode_png(default["image_png"].iloc[0]).max() <= img.max()


def test_label_moving_rows_carry_moved_mask_and_box() -> None:
    df = canonical(2)
    out = perturb_table(df, "rotation", levels=[4], progress=False)
    for r in out.itertuples():
        mask = decode_png(r.mask_png)
        assert list(r.box) == box_from_mask(mask)
        assert list(r.box) != list(df.loc[df.image_id == r.image_id, "box"].iloc[0])


def test_box_only_rows_move_the_box() -> None:
    df = canonical(1).drop(columns=["mask_png"])
    out = perturb_table(df, "scale", levels=[5], progress=False)
    x0, y0, x1, y1 = df["box"].iloc[0]
    nx0, ny0, nx1, ny1 = out["box"].iloc[0]
    assert (nx1 - nx0) < (x1 - x0) and (ny1 - ny0) < (y1 - y0)  # shrunk with the image
    assert out["mask_png"].iloc[0] is None
    none = perturb_table(df.drop(columns=["box"]), "scale", levels=[1], progress=False)
    assert none["box"].iloc[0] is None


def test_select_images_is_order_independent() -> None:
    df = canonical(6)
    a = select_images(df, 3, 0)
    b = select_images(df.iloc[::-1], 3, 0)
    assert list(a["image_id"]) == list(b["image_id"]) and len(a) == 3
    assert list(select_images(df, None)["image_id"]) == sorted(df["image_id"])


def test_report_and_contact_sheet(tmp_path: Path) -> None:
    df = canonical(2, rgb=True)
    test_path = tmp_path / "test.parquet"
    df.to_parquet(test_path)
    shards = []
    for name in ("gaussian_noise", "vignette"):
        p = tmp_path / f"{name}.parquet"
        write_perturbed_shard(p, perturb_table(df, name, progress=False))
        shards.append(p)
    table, summary = calibration_report([pd.read_parquet(p) for p in shards])
    assert len(table) == 10 and set(summary["per_level"]) == {"1", "2", "3", "4", "5"}
    assert {"in_band_rate", "param_median", "param_min", "param_max"} <= set(table.columns)
    write_calibration_report(shards, tmp_path / "r.csv", tmp_path / "r.json", dataset="toy")
    assert json.loads((tmp_path / "r.json").read_text())["n_outputs"] == 20
    sheet = tmp_path / "sheet.png"
    write_contact_sheet(test_path, shards, sheet, tile=48)
    arr = read_image(sheet)
    assert arr.ndim == 3 and arr.shape[1] >= 6 * 48 and arr.shape[0] >= 2 * 48


# ------------------------------------------------------------------ command line


def _run(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_lists_the_registry(capsys) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = _run(capsys, "perturbations", "--json")
    data = json.loads(out)
    assert (
        rc == 0
        and len(data) == 40
        and {"name", "category", "modalities", "param", "moves_labels"} <= set(data[0])
    )
    rc, out, _ = _run(capsys, "perturbations")
    assert rc == 0 and "kspace_motion" in out


def test_cli_perturb_and_ssim(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    img, mask = shape_image(64)
    Image.fromarray(img).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    rc, out, _ = _run(
        capsys,
        "perturb",
        str(tmp_path / "in.png"),
        str(tmp_path / "out.png"),
        "--type",
        "rotation",
        "--level",
        "3",
        "--seed",
        "4",
        "--mask",
        str(tmp_path / "m.png"),
        "--mask-out",
        str(tmp_path / "mo.png"),
    )
    info = json.loads(out)
    assert rc == 0 and {"type", "level", "ssim", "param", "in_band", "band"} <= set(info)
    res = read_image(tmp_path / "out.png")
    assert res.shape == img.shape and res.dtype == img.dtype
    assert read_image(tmp_path / "mo.png").shape == mask.shape
    rc, out, _ = _run(capsys, "ssim", str(tmp_path / "in.png"), str(tmp_path / "out.png"))
    assert rc == 0 and abs(float(out) - info["ssim"]) < 1e-6

    big = np.zeros((40, 40), np.uint16) + 9000
    big[10:30, 10:30] = 30000
    Image.fromarray(big).save(tmp_path / "in16.png")
    rc, out, _ = _run(
        capsys,
        "perturb",
        str(tmp_path / "in16.png"),
        str(tmp_path / "o16.png"),
        "--type",
        "gaussian_noise",
        "--level",
        "2",
    )
    assert rc == 0 and read_image(tmp_path / "o16.png").dtype == np.uint16


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--type", "fog", "--level", "1"], "unknown perturbation type 'fog'"),
        (["--type", "hair", "--level", "6"], "level"),
        (["--type", "hair", "--level", "0"], "level"),
        (["--type", "rotation", "--level", "1", "--mask", "{small}"], "mask"),
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(tmp_path: Path, capsys, args, message) -> None:  # type: ignore[no-untyped-def]
    img, _ = shape_image(64)
    Image.fromarray(img).save(tmp_path / "in.png")
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(tmp_path / "small.png")
    args = [a.replace("{small}", str(tmp_path / "small.png")) for a in args]
    rc, out, err = _run(capsys, "perturb", str(tmp_path / "in.png"), str(tmp_path / "out.png"), *args)
    assert rc != 0 and message in err and err.count("\n") == 1 and out == ""
    assert not (tmp_path / "out.png").exists()


def test_cli_unreadable_image(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    rc, _, err = _run(
        capsys,
        "perturb",
        str(tmp_path / "bad.png"),
        str(tmp_path / "o.png"),
        "--type",
        "hair",
        "--level",
        "1",
    )
    assert rc != 0 and "bad.png" in err and not (tmp_path / "o.png").exists()
    rc, _, err = _run(capsys, "ssim", str(tmp_path / "bad.png"), str(tmp_path / "bad.png"))
    assert rc != 0 and "bad.png" in err


# ------------------------------------------------------------------ workflow helpers


def test_workflow_settings_carry_only_one_types_settings(repo: Path) -> None:
    from medfm_robust.config import load_config
    from medfm_robust.perturb import workflow as wf

    cfg = load_config(repo / "config" / "config.yaml")
    cfg["perturb"]["overrides"] = {"rotation": {"param_range": [1, 30], "levels": [5, 1]}}
    rot, hair = wf.settings_for(cfg, "rotation"), wf.settings_for(cfg, "hair")
    assert rot["param_range"] == [1, 30] and rot["levels"] == [1, 5]
    assert hair["param_range"] is None and hair["levels"] == [1, 2, 3, 4, 5]
    cfg2 = load_config(repo / "config" / "config.yaml")
    cfg2["perturb"]["overrides"] = {"rotation": {"param_range": [2, 30]}}
    assert wf.settings_for(cfg2, "hair") == hair  # another type's change leaves hair's params alone

    # registry options: defaults filled in, the paper's HSV stain model selectable, bad values refused
    assert wf.settings_for(cfg, "stain_variation")["options"] == {"space": "hed"} and hair["options"] == {}
    cfg2["perturb"]["overrides"] = {"stain_variation": {"options": {"space": "hsv"}}}
    assert wf.settings_for(cfg2, "stain_variation")["options"] == {"space": "hsv"}
    cfg2["perturb"]["overrides"] = {"stain_variation": {"options": {"space": "lab"}}}
    with pytest.raises(ConfigError, match="stain_variation"):
        wf.settings_for(cfg2, "stain_variation")

    cfg["perturb"]["exclude"] = ["hair"]
    derm = next(d for d in cfg["datasets"] if cfg["datasets"][d]["modality"] == "dermoscopy")
    types = wf.types_for(cfg, derm)
    assert "hair" not in types and "vignette" in types and "metal_streaks" not in types
    targets = wf.final_targets(cfg, sorted(cfg["datasets"]))
    assert f"results/perturbed/{derm}/vignette.parquet" in targets
    assert f"results/perturbed/{derm}/calibration_report.json" in targets
    assert "results/figures/contact_sheets/dermoscopy.png" in targets
    sheet = wf.sheet_inputs(cfg, sorted(cfg["datasets"]), "dermoscopy")
    assert sheet["test"] == f"results/data/{derm}/test.parquet" and len(sheet["shards"]) == len(types)
