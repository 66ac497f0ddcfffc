"""config/paper.yaml is the paper's protocol (Table 1 datasets, the original per-dataset perturbation
lists, strategy variants, hyper-parameters, report metrics); config/paper_full.yaml extends it."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfm_robust.config import load_config
from medfm_robust.errors import ConfigError, DataError
from medfm_robust.perturb.workflow import types_for
from medfm_robust.seg.finetune_config import run_settings

# The original segmentation protocol (generator's per-dataset lists, base | medical-specific;
# ../shared/reference/segmentation.md section 2.3) and our registry's name for each original type
# (docs/deviations.md): brightness_contrast is two of our types.
ORIGINAL = {
    "isic2016": ["gaussian_noise", "gaussian_blur", "compression_artifacts", "brightness_contrast",
                 "pixelate", "dermoscopy_artifacts", "light_reflection", "hair_artifacts"],
    "kvasir_seg": ["gaussian_noise", "gaussian_blur", "motion_blur", "brightness_contrast",
                   "specular_reflection", "bubbles", "blood", "saturation"],
    "brain_tumor": ["gaussian_noise", "gaussian_blur", "motion_blur", "motion_artifacts", "bias_field",
                    "ghosting"],
    "glaucoma_disc": ["gaussian_noise", "gaussian_blur", "motion_blur", "shadow_artifacts", "blink_artifacts",
                      "motion_artifacts_oct", "defocus_artifacts", "speckle_artifacts"],
}
ORIGINAL["glaucoma_cup"] = ORIGINAL["glaucoma_disc"]
OURS = {
    "compression_artifacts": ["jpeg_compression"],
    "brightness_contrast": ["brightness", "contrast"],
    "dermoscopy_artifacts": ["vignette"],
    "hair_artifacts": ["hair"],
    "saturation": ["overexposure"],
    "motion_artifacts": ["kspace_motion"],
    "shadow_artifacts": ["shadow"],
    "blink_artifacts": ["blink"],
    "motion_artifacts_oct": ["oct_motion"],
    "defocus_artifacts": ["defocus"],
    "speckle_artifacts": ["oct_speckle"],
}


@pytest.fixture(scope="module")
def paper(repo: Path) -> dict:
    return load_config(repo / "config" / "paper.yaml")


def test_paper_datasets_and_perturbation_lists(paper: dict) -> None:
    assert sorted(paper["datasets"]) == sorted(ORIGINAL)  # Table 1: no BUSI
    assert paper["datasets"]["isic2016"]["parts"] == ["Training"]
    for dataset, original in ORIGINAL.items():
        expected = {ours for name in original for ours in OURS.get(name, [name])}
        assert set(types_for(paper, dataset)) == expected, dataset
        assert not expected & {"rotation", "scale", "translation"}
    assert paper["perturb"]["levels"] == [1, 2, 3, 4, 5]


def test_paper_training_setting_and_variants(paper: dict) -> None:
    ft = paper["finetune"]
    for model, strategies in (("medsam", 5), ("sam_med2d", 6)):
        assert len(ft["models"][model]["strategies"]) == strategies
        for strategy in ft["models"][model]["strategies"]:
            train = run_settings(ft, model, strategy)["train"]
            assert (train["epochs"], train["batch_size"], train["lr"]) == (50, 32, 1e-4)
            assert (train["micro_batch_size"] or 32) <= 32
    enc = run_settings(ft, "sam_med2d", "enc_only")["strategy"]
    assert enc == {"name": "enc_only", "unfreeze_last_blocks": 2, "train_decoder": True,
                   "train_prompt_encoder": True, "train_adapters": True, "train_neck": False}
    assert run_settings(ft, "medsam", "enc_only")["strategy"]["train_adapters"] is False
    adapter = run_settings(ft, "sam_med2d", "adapter")["strategy"]
    assert adapter["train_decoder"] and adapter["train_prompt_encoder"]
    assert paper["report"]["vlm_metrics"] == {"vqa": "correct", "caption": "bleu4_corpus", "grounding": "hit"}


def test_paper_full_extends_the_protocol(repo: Path, paper: dict) -> None:
    full = load_config(repo / "config" / "paper_full.yaml")
    assert set(full["datasets"]) == set(paper["datasets"]) | {"busi"}
    assert "parts" not in full["datasets"]["isic2016"] and full["perturb"]["per_dataset"] == {}
    assert "rotation" in types_for(full, "kvasir_seg")
    assert full["finetune"] == paper["finetune"] and full["vlm"] == paper["vlm"]


def test_per_dataset_lists_are_checked(paper: dict) -> None:
    cfg = {**paper, "perturb": {**paper["perturb"], "per_dataset": {"brain_tumor": ["hair"]}}}
    with pytest.raises(ConfigError, match=r"perturb.per_dataset.brain_tumor': \['hair'\] not applicable to"):
        types_for(cfg, "brain_tumor")
    cfg["perturb"]["per_dataset"] = {"busi": ["gaussian_noise"]}
    with pytest.raises(ConfigError, match=r"'perturb.per_dataset': unknown dataset\(s\) \['busi'\]"):
        types_for(cfg, "kvasir_seg")


def test_isic2016_training_part_only(tmp_path: Path) -> None:
    from medfm_robust.data.fixtures import build_fixture_resources
    from medfm_robust.data.registry import get_adapter

    root = build_fixture_resources(tmp_path / "res", with_models=False) / "datasets" / "ISIC2016"
    adapter = get_adapter("isic2016")

    def ids(**extra: object) -> list[str]:
        spec = {"adapter": "isic2016", "path": str(root), **extra}
        return sorted(it.image_id for it in adapter.list_items("isic", spec, root, 0))

    assert ids(parts=["Training"]) == [f"ISIC_{i:07d}" for i in range(4)]
    assert ids() == ids(parts=["Training", "Test"]) == [f"ISIC_{i:07d}" for i in (0, 1, 2, 3, 100, 101)]
    with pytest.raises(DataError, match=r"unknown ISIC 2016 part\(s\) \['Validation'\]"):
        ids(parts=["Validation"])
