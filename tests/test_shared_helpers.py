"""Shared helpers: the box rule (box_from_mask and its strict variants), the box text format, the device
picker and the resume-state reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medfm_robust.boxes import box_from_mask, box_text, require_box, require_box_tensor
from medfm_robust.devices import pick_device
from medfm_robust.errors import ConfigError, DataError
from medfm_robust.resume import read_resume_state, write_resume_state


def test_box_is_medsam_np_where_box() -> None:
    """MedSAM's pre_CT_MR.py: ``y_indices, x_indices = np.where(gt > 0)``, box = min/max (inclusive)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = (rng.random((17, 23)) > 0.97).astype(np.uint8) * 255
        if not m.any():
            continue
        y, x = np.where(m > 0)
        ref = [int(np.min(x)), int(np.min(y)), int(np.max(x)), int(np.max(y))]
        assert box_from_mask(m) == ref
        assert require_box(m).tolist() == ref and require_box(m).dtype == np.int64
        t = require_box_tensor(torch.from_numpy(m > 0))
        assert t.dtype == torch.float32 and t.tolist() == ref


def test_empty_and_bad_masks() -> None:
    assert box_from_mask(np.zeros((4, 4), bool)) is None
    with pytest.raises(DataError, match=r"a\.png: empty mask"):
        require_box(np.zeros((3, 3)), "a.png")
    with pytest.raises(DataError, match="empty mask"):
        require_box_tensor(torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(DataError, match="H x W"):
        box_from_mask(np.ones((2, 2, 3)))


def test_box_text_matches_both_former_formats_on_their_inputs() -> None:
    """The merged format equals the former ``format_box`` (``:g``) and ``box_text`` (4 decimals) on every
    value their callers produce: integral pixel boxes and ``norm1`` boxes rounded to 3 decimals."""
    assert box_text([3, 2.0, np.int32(10), np.float64(7)]) == "[3, 2, 10, 7]"
    for k in range(-1000, 2001):
        v = round(k / 1000, 3)
        g = str(int(v)) if float(v).is_integer() else f"{v:g}"
        assert box_text([v]) == f"[{g}]"
    assert box_text([0.12345678]) == "[0.1235]"


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("auto") == pick_device(None)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"finetune\.device 'cuda'"):
            pick_device("cuda", "finetune.device")


def test_resume_state_round_trip_and_distrust(tmp_path: Path) -> None:
    path = tmp_path / "run.state.pt"
    assert read_resume_state(None, "f") is None and read_resume_state(path, "f") is None
    write_resume_state(path, {"fingerprint": "f", "epoch": 2, "w": torch.arange(3)})
    state = read_resume_state(path, "f")
    assert state is not None and state["epoch"] == 2 and torch.equal(state["w"], torch.arange(3))
    assert read_resume_state(path, "other settings") is None
    path.write_bytes(b"not a torch file")
    assert read_resume_state(path, "f") is None
