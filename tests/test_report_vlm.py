"""VLM tables: corpus BLEU-4 cells equal pycocoevalcap on the same image sets, image-blind controls beside
clean and perturbed scores with the guessing flag, unparsed/abstained rates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pycocoevalcap.bleu.bleu import Bleu

from medfm_robust.io import write_parquet_atomic
from medfm_robust.metrics.captions import BLEU_STATS, caption_scores, corpus_bleu, simple_tokenize
from medfm_robust.metrics.vlm import conditions_from
from medfm_robust.report.aggregate import BootstrapSettings
from medfm_robust.report.build import vlm_tables
from medfm_robust.vlm.scoring import score_outputs

REFS = ["axial ct of the chest showing a small nodule in the right lung",
        "mri of the brain with a large lesion in the left hemisphere",
        "plain x ray of the left hand with no fracture",
        "ultrasound of the breast showing a hypoechoic mass",
        "ct of the abdomen showing a cyst in the liver",
        "chest x ray with a right pleural effusion"]
CLEAN = ["ct of the chest with a small nodule in the right lung", "brain mri showing a lesion",
         "x ray of the right hand showing a fracture", "ultrasound of the breast showing a hypoechoic mass",
         "ct of the abdomen with a liver cyst", "chest x ray with pleural effusion on the right"]
NOISY = ["ct of the chest", "mri of the head", "x ray of a hand", "ultrasound image",
         "abdominal ct", "chest x ray"]


def _bleu4(refs: list[str], hyps: list[str]) -> float:
    gts = {i: [simple_tokenize(r)] for i, r in enumerate(refs)}
    res = {i: [simple_tokenize(h)] for i, h in enumerate(hyps)}
    return Bleu(4).compute_score(gts, res, verbose=0)[0][3]


def test_corpus_bleu_of_any_resample_equals_pycocoevalcap() -> None:
    """Summed per-sample counts give pycocoevalcap's corpus BLEU-4 of that (multi)set: a bootstrap replicate
    is the corpus BLEU of the resampled captions. Corpus and mean-sentence BLEU differ by design."""
    scores = caption_scores(REFS, CLEAN)
    idx = np.array([0, 0, 2, 3, 5, 5])  # one resample with repeats
    sums = {k: scores.per_sample[k][idx].sum() for k in BLEU_STATS}
    expected = _bleu4([REFS[i] for i in idx], [CLEAN[i] for i in idx])
    assert float(corpus_bleu(sums)) == pytest.approx(expected, rel=1e-12)
    assert scores.corpus["bleu4"] == pytest.approx(_bleu4(REFS, CLEAN), rel=1e-12)
    # short outputs: sentence BLEU-4 is ~0 for most, the pooled counts still hold 4-gram matches
    noisy = caption_scores(REFS, NOISY)  # corpus 0.0685 vs mean sentence 0.0186
    assert noisy.corpus["bleu4"] > 2 * noisy.per_sample["bleu4"].mean()


def _caption_files(root: Path) -> list[str]:
    samples = pd.DataFrame({"sample_id": [f"c{i}" for i in range(6)], "dataset": "roco", "modality": "xray",
                            "reference": REFS})
    paths = []
    for name, hyps, cond in (("clean", CLEAN, None),
                             ("gaussian_noise", NOISY, {"perturbation": "gaussian_noise", "category": "base",
                                                        "level": 3, "ssim": 0.8})):
        table = score_outputs("caption", conditions_from(samples, cond), hyps, model="m", model_revision="r")
        paths.append(str(root / f"{name}.parquet"))
        write_parquet_atomic(paths[-1], table)
    return paths


def test_bleu4_corpus_cells_are_pycocoevalcap_corpus_bleu(tmp_path: Path) -> None:
    paths = _caption_files(tmp_path)
    settings = BootstrapSettings(200, 0.95, 0)
    tables = {t.name: t for t in vlm_tables(paths, settings, {"caption": "bleu4_corpus"})}
    wide = tables["vlm_clean_vs_perturbed"].wide().iloc[0]
    assert wide["clean"] == pytest.approx(_bleu4(REFS, CLEAN), rel=1e-12)
    assert wide["perturbed"] == pytest.approx(_bleu4(REFS, NOISY), rel=1e-12)
    assert wide["absolute drop"] == pytest.approx(wide["clean"] - wide["perturbed"], rel=1e-12)
    assert wide["clean_ci_low"] <= wide["clean"] <= wide["clean_ci_high"]
    assert wide["absolute drop_ci_low"] > 0  # every resample loses BLEU under this "perturbation"
    per = tables["vlm_perturbation_drop"].wide().iloc[0]
    assert per["caption"] == pytest.approx(wide["absolute drop"], rel=1e-12)


SAMPLES = pd.DataFrame({"sample_id": [f"q{i:02d}" for i in range(12)], "dataset": "omni", "modality": "ct",
                        "options": [["yes", "no"]] * 12, "answer": ["A", "B"] * 6})


def _vqa_files(root: Path, model: str, answers: dict[str, list[str]]) -> list[str]:
    paths = []
    for cond, raw in answers.items():
        values = None
        if cond == "noise":
            values = {"perturbation": "gaussian_noise", "category": "base", "level": 1, "ssim": 0.9}
        elif cond != "clean":
            values = {"perturbation": cond, "category": "control", "level": 0, "ssim": float("nan")}
        table = score_outputs("vqa", conditions_from(SAMPLES, values), raw, model=model, model_revision="r")
        paths.append(str(root / model / f"{cond}.parquet"))
        write_parquet_atomic(paths[-1], table)
    return paths


def test_controls_sit_beside_clean_and_perturbed_and_flag_guessing(tmp_path: Path) -> None:
    truth = list(SAMPLES["answer"])
    flip = {"A": "B", "B": "A"}
    seer = {"clean": truth, "noise": [*truth[:11], flip[truth[11]]],
            "blank_image": ["A"] * 12, "no_image": ["I cannot determine this without the image."] * 12}
    guesser = {"clean": ["A"] * 12, "noise": [*["A"] * 10, "A or B", "A"], "blank_image": ["A"] * 12,
               "no_image": ["A"] * 12}
    paths = _vqa_files(tmp_path, "seer", seer) + _vqa_files(tmp_path, "guesser", guesser)
    tables = {t.name: t for t in vlm_tables(paths, BootstrapSettings(0, 0.95, 0), {"vqa": "correct"})}
    main = tables["vlm_clean_vs_perturbed"]
    wide = main.wide().set_index("model")
    assert main.columns == ["clean", "perturbed", "absolute drop", "blank image", "no image"]
    assert wide.loc["seer", "perturbed"] == pytest.approx(11 / 12) and wide.loc["seer", "blank image"] == 0.5
    assert wide.loc["seer", "no image"] == 0.0  # abstained: unparsed, counted as wrong
    assert wide.loc["guesser", "absolute drop"] == pytest.approx(1 / 12)
    assert wide.loc["seer", "image-blind check"] == "above blank"
    assert wide.loc["guesser", "image-blind check"] == "near blank"
    assert "guesser/vqa" in main.notes[-1] and "seer" not in main.notes[-1]
    assert "blank-image score is guessing" in main.title
    rates = tables["vlm_answer_rates"].wide().set_index(["model", "condition"])
    conditions = ["clean", "perturbed", "blank_image", "no_image", "gaussian_noise"]
    assert list(rates.loc["seer"].index) == conditions
    assert rates.loc[("seer", "no_image"), "abstained"] == 1.0 == rates.loc[("seer", "no_image"), "unparsed"]
    assert rates.loc[("guesser", "perturbed"), "unparsed"] == pytest.approx(1 / 12)
    assert rates.loc[("guesser", "gaussian_noise"), "unparsed"] == pytest.approx(1 / 12)
    assert rates.loc[("guesser", "clean"), "abstained"] == 0.0
    # controls never enter the drops
    assert set(tables["vlm_perturbation_drop"].wide()["perturbation"]) == {"gaussian_noise"}


def test_clean_vs_perturbed_panel_shows_the_blank_image_bar(tmp_path: Path) -> None:
    from medfm_robust.report.build import write_tables
    from medfm_robust.report.figures import draw_figures

    truth = list(SAMPLES["answer"])
    answers = {"clean": truth, "noise": truth, "blank_image": ["A"] * 12}
    paths = _vqa_files(tmp_path, "seer", answers)
    tables = vlm_tables(paths, BootstrapSettings(20, 0.95, 0), {"vqa": "correct"})
    write_tables(tables, tmp_path / "tables", tmp_path / "cells.parquet")
    cells = pd.read_parquet(tmp_path / "cells.parquet")
    main = cells[cells["table"] == "vlm_clean_vs_perturbed"]
    assert set(main["column"]) == {"clean", "perturbed", "absolute drop", "blank image"}
    out = draw_figures("vlm", tmp_path / "cells.parquet", [tmp_path / "fig3g_vqa_clean_vs_perturbed"], dpi=40)
    assert all(Path(p).stat().st_size > 0 for p in out)
