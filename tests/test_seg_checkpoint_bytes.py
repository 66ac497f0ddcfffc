"""Checkpoint files are byte-reproducible: the same tensors and metadata give the same bytes every time."""

from __future__ import annotations

import torch
from safetensors.torch import load, save

from medfm_robust.seg.checkpoint import safetensors_bytes


def test_safetensors_bytes_do_not_depend_on_the_metadata_hash_order() -> None:
    tensors = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.weight": torch.ones(3, dtype=torch.float16)}
    metadata = {"format": "medfm-robust-finetuned", "strategy": "lora", "datasets": "a,b"}
    ours = {safetensors_bytes(tensors, metadata) for _ in range(20)}
    plain = {save(tensors, metadata=metadata) for _ in range(20)}
    assert len(ours) == 1  # the library alone writes the metadata in a varying order (several distinct files)
    data = ours.pop()
    assert data in plain  # the same file the library writes, with its metadata keys in sorted order
    assert torch.equal(load(data)["b.weight"], tensors["b.weight"])


def test_a_fine_tuned_checkpoint_written_twice_is_the_same_file(tmp_path) -> None:
    from medfm_robust.seg.checkpoint import read_finetuned, save_finetuned

    tensors = {f"layer{i}.weight": torch.full((2, 2), float(i)) for i in range(12)}
    meta = {"strategy": "lora", "datasets": ["a", "b"], "seed": 1, "base_checkpoint_sha256": "0" * 64}
    save_finetuned(tmp_path / "one.safetensors", tensors, meta)
    save_finetuned(tmp_path / "two.safetensors", tensors, meta)
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()
    back, side = read_finetuned(tmp_path / "two.safetensors")
    assert side["strategy"] == "lora" and torch.equal(back["layer7.weight"], tensors["layer7.weight"])
