"""Numerical parity of the segmentation wrappers with the OFFICIAL pipelines, and safe checkpoint loading.

``tests/data/parity/<model>__<image>.npz`` holds the probability maps (at the original size) that the
official code produced (``docs/parity.md``: SAM-Med2D's ``SammedPredictor``, MedSAM's
``MedSAM_Inference.py``, the LiteMedSAM branch's ``CVPR24_LiteMedSAM_infer.py``,
``segment_anything.SamPredictor``) from the weights and images of ``parity_inputs.py``. Each test rebuilds
the same checkpoint, in the official file format, and checks our wrapper against those maps.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from parity_inputs import parity_images, parity_state_dict

from medfm_robust.errors import CheckpointError
from medfm_robust.seg import models as M
from medfm_robust.seg.checkpoint import read_state_dict

REF = Path(__file__).parent / "data" / "parity"
IMAGES = parity_images()
TOL = 1e-3  # probability; the measured differences are ~1e-7 (float rounding), see docs/parity.md


def _official_checkpoint(name: str, path: Path) -> Path:
    """The parity weights saved as the official files are: a raw state dict, or (SAM-Med2D ``train.py``)
    ``{'model': state_dict, 'optimizer': <torch.optim.Adam object>}``."""
    net = M.MODEL_SPECS[name].builder()
    state = parity_state_dict(net)
    if name == "sam_med2d":
        net.load_state_dict(state)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        torch.save({"model": net.state_dict(), "optimizer": optimizer}, path)
    else:
        torch.save(state, path)
    return path


def _probabilities(model: M.PromptableSegmenter) -> dict[str, np.ndarray]:
    out = {}
    for key, (img, box) in IMAGES.items():
        x = M.images_to_batch([img])
        with torch.no_grad():
            logits = model(x, torch.tensor(box[None], dtype=torch.float32))
        out[key] = torch.sigmoid(logits)[0, 0].numpy()
    return out


def _reference(name: str) -> dict[str, np.ndarray]:
    """``{image: probability map}`` from ``<name>__<image>.npz`` (``prob`` = round(p * 65535), uint16)."""
    out = {}
    for key in IMAGES:
        with np.load(REF / f"{name}__{key}.npz") as data:
            out[key] = data["prob"].astype(np.float32) / np.float32(65535.0)
    return out


def _check(name: str, ours: dict[str, np.ndarray]) -> None:
    ref = _reference(name)
    for key, p in ours.items():
        r = ref[key]
        assert p.shape == r.shape == IMAGES[key][0].shape[:2]
        a, b = p > 0.5, r > 0.5
        iou = (a & b).sum() / (a | b).sum()
        assert 0.2 < b.mean() < 0.9, "reference mask should be neither empty nor full"
        assert np.abs(p - r).max() <= TOL, (name, key, float(np.abs(p - r).max()))
        assert iou >= 0.99, (name, key, float(iou))


@pytest.mark.parametrize("name", ["sam_med2d", "lite_medsam"])
def test_256_models_equal_official_pipelines(name: str, tmp_path: Path) -> None:
    model = M.build_model(name, checkpoint=_official_checkpoint(name, tmp_path / f"{name}.pth"))
    _check(name, _probabilities(model))


@pytest.mark.slow
def test_medsam_and_sam_vit_b_equal_official_pipelines(tmp_path: Path) -> None:
    # Both are SAM ViT-B with the same state-dict keys, so the parity weights (drawn per key) are equal.
    # Six ViT-B forwards at 1024 x 1024 (about 10 s each on one CPU core), hence slow.
    path = _official_checkpoint("medsam", tmp_path / "vit_b.pth")
    for name in ("medsam", "sam_vit_b"):
        _check(name, _probabilities(M.build_model(name, checkpoint=path)))


# ---------------------------------------------------------------------------------- safe loading


def _tiny_state() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    net = M.build_tiny_sam()
    return net, parity_state_dict(net)


def test_checkpoint_with_pickled_optimizer_object_loads_without_weights_only(tmp_path: Path) -> None:
    net, state = _tiny_state()
    net.load_state_dict(state)
    path = tmp_path / "sam-med2d_style.pth"
    torch.save({"model": net.state_dict(), "optimizer": torch.optim.Adam(net.parameters())}, path)
    with pytest.raises(pickle.UnpicklingError):  # why a plain weights_only load is not enough
        torch.load(path, weights_only=True)
    loaded = read_state_dict(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["optimizer", "model"])
def test_checkpoint_with_code_is_refused_without_running_it(tmp_path: Path, where: str) -> None:
    _, state = _tiny_state()
    marker = tmp_path / "executed"
    obj: dict[str, object] = {"model": dict(state), "optimizer": {"state": {}}}
    if where == "model":
        obj["model"]["image_encoder.pos_embed"] = _Payload(marker)  # type: ignore[index]
    else:
        obj["optimizer"] = _Payload(marker)
    path = tmp_path / "evil.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: cannot be read safely .*system") as err:
        read_state_dict(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_unreadable_and_non_tensor_checkpoints_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"broken\.pth"):
        read_state_dict(bad)
    opt_only = tmp_path / "opt_only.pth"
    net, _ = _tiny_state()
    torch.save({"optimizer": torch.optim.SGD(net.parameters(), lr=0.1)}, opt_only)
    with pytest.raises(CheckpointError, match=r"opt_only\.pth: not a state dict of tensors"):
        read_state_dict(opt_only)
