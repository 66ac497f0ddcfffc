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
