"""Estimated GPU memory of fine-tuning MedSAM (1024 px) and SAM-Med2D (256 px) per strategy.

No GPU and no weights are needed: the full-size models are built on PyTorch's ``meta`` device (shapes and
dtypes, no storage, no compute), the strategy of ``--config`` is applied, and one training forward of one
image at the model's input size is recorded with ``torch.autograd.graph.saved_tensors_hooks``: the bytes
autograd keeps for the backward pass are the activation memory per sample. Then, in fp32:

    static     = weights (all) + gradients + AdamW exp_avg + exp_avg_sq (trainable only)
    activation = forward peak of live tensors per sample x micro_batch_size (a TorchDispatchMode counts
                 every op output until it is freed: the saved activations plus transients such as the
                 global-attention score matrices, which dominate a frozen 1024-px encoder's forward)
                 (activation checkpointing: the larger of the checkpointed forward's peak and its saved
                 bytes plus the largest block's, recomputed during backward, x micro_batch_size)
    estimate   = static + activation            (allocator overhead and cuBLAS/cuDNN workspaces not included)

``--check`` compares the meta count with the same count on real CPU tensors (SAM-Med2D, batch 1) to show
the meta forward records the same graph. Mixed precision (``finetune.train.amp``) stores most matmul
inputs in 16 bits, so the activation term is an upper bound on a GPU with AMP on.

    .venv/bin/python benchmarks/finetune_memory.py --config config/paper.yaml [--json out.json] [--check]
"""

from __future__ import annotations

import argparse
import json
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from medfm_robust.config import load_config
from medfm_robust.seg.finetune_config import StrategySpec, strategy_structure
from medfm_robust.seg.models import MODEL_SPECS
from medfm_robust.seg.strategies import apply_strategy, count_parameters, encoder_blocks
from medfm_robust.seg.trainer import activation_checkpointing

GIB = 2**30


def _state_keys(model: nn.Module) -> list[int]:
    return [t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]]


@contextmanager
def saved_bytes(
    per_block: dict[int, int] | None = None, model: nn.Module | None = None
) -> Iterator[list[int]]:
    """Count the bytes autograd saves for backward, each storage once (total, and per encoder block when
    asked; a storage is charged to the block that saved it first)."""
    total = [0]
    current: list[int] = []
    handles = []
    def leave(module: nn.Module, args: Any, out: Any) -> None:
        current.pop()

    if per_block is not None and model is not None:
        for i, block in enumerate(encoder_blocks(model.image_encoder)):
            handles.append(block.register_forward_pre_hook(lambda m, a, i=i: current.append(i)))
            handles.append(block.register_forward_hook(leave))

    # weights saved for backward are already counted as parameters; views of one storage (q, k, v of one
    # qkv output) count once
    seen: set[int] = set(_state_keys(model)) if model is not None else set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key in seen:
            return t
        seen.add(key)
        n = t.untyped_storage().nbytes()
        total[0] += n
        if per_block is not None and current:
            per_block[current[-1]] = per_block.get(current[-1], 0) + n
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield total
    finally:
        for h in handles:
            h.remove()


class LivePeak:
    """Peak bytes of live activations during a forward: every op output with its own storage counts from
    its creation until its Python object is freed, unless autograd saved it for backward (then it stays
    until the end): the saved activations plus transients such as attention score matrices."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()
        self.saved: set[int] = set()

    def _free(self, key: int, n: int) -> None:
        if key not in self.saved:
            self.live -= n
            self._seen.discard(key)  # the address may be reused by a new storage

    def track(self, out: Any) -> None:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor) or t._is_view():
                continue
            key = t.untyped_storage()._cdata
            if key in self._seen:
                continue
            n = t.untyped_storage().nbytes()
            self._seen.add(key)
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, key, n)


@contextmanager
def live_peak() -> Iterator[LivePeak]:
    """Track :class:`LivePeak` over every aten op run inside the context."""
    from torch.utils._python_dispatch import TorchDispatchMode

    tracker = LivePeak()

    def pack(t: torch.Tensor) -> torch.Tensor:
        tracker.saved.add(t.untyped_storage()._cdata)
        return t

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            tracker.track(out)
            return out

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), Mode():
        yield tracker


def _forward(model: nn.Module, device: str, batch: int = 1) -> None:
    """One training forward of one image at the model's input size (already preprocessed) and its box."""
    size = model.input_size
    x = torch.rand(batch, 3, size, size, device=device)
    box = torch.tensor([[size * 0.2, size * 0.25, size * 0.7, size * 0.8]] * batch, device=device)
    emb = model.image_encoder(x)
    low = model.decode_low_res(emb, box, (size, size))
    low.float().sum()  # the loss is computed on the logits (not saved beyond them)


def measure(name: str, strategy: str, ft_cfg: dict[str, Any], device: str = "meta") -> dict[str, Any]:
    """Parameter counts and saved activation bytes per sample (plain and checkpointed) of one strategy."""
    with torch.device(device):
        model = MODEL_SPECS[name].builder()
    torch.manual_seed(0)
    spec = StrategySpec.from_config(strategy, strategy_structure(ft_cfg, name, strategy))
    apply_strategy(model, spec)
    model.train()
    trainable, total = count_parameters(model)
    per_block: dict[int, int] = {}
    with saved_bytes(per_block, model) as plain:
        _forward(model, device)
    with activation_checkpointing(model), saved_bytes(model=model) as ckpt:
        _forward(model, device)
    peaks = []
    for batch in (1, 2):  # live peak = fixed + batch x per-sample
        with live_peak() as live:
            _forward(model, device, batch)
        peaks.append(live.peak)
    with activation_checkpointing(model), live_peak() as live_ckpt:
        _forward(model, device)
    return {
        "model": name,
        "strategy": strategy,
        "structure": spec.structure(),
        "trainable_params": trainable,
        "total_params": total,
        "act_bytes_per_sample": plain[0],
        "act_bytes_per_sample_ckpt": ckpt[0],
        "max_block_bytes": max(per_block.values()) if per_block else 0,
        "forward_peak_bytes_per_sample": peaks[1] - peaks[0],
        "forward_peak_bytes_per_sample_ckpt": live_ckpt.peak,
    }


def estimate(row: dict[str, Any], micro: int, ckpt: bool) -> float:
    """Estimated peak GiB (fp32) at ``micro`` images per forward/backward (see module docstring)."""
    static = 4 * (row["total_params"] + 3 * row["trainable_params"])
    if ckpt:  # forward peak, or the blocks' inputs plus one block recomputed in backward, if larger
        act = max(
            row["forward_peak_bytes_per_sample_ckpt"],
            row["act_bytes_per_sample_ckpt"] + row["max_block_bytes"],
        ) * micro
    else:
        act = max(row["forward_peak_bytes_per_sample"], row["act_bytes_per_sample"]) * micro
    return (static + act) / GIB


def markdown(rows: list[dict[str, Any]], ft: dict[str, Any]) -> str:
    """The table of docs/deviations.md: per (model, strategy) the estimate at batch 32 in one pass and at the
    config's micro-batch / checkpointing setting."""
    from medfm_robust.seg.finetune_config import run_settings

    lines = [
        "| model | strategy | trainable | saved / image | forward peak / image | batch 32, one pass | "
        "config setting | estimate |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        train = run_settings(ft, r["model"], r["strategy"])["train"]
        micro = train.get("micro_batch_size") or train["batch_size"]
        ckpt = bool(train.get("activation_checkpointing"))
        setting = ("one pass" if micro >= train["batch_size"] else f"micro {micro}") + (
            " + checkpointing" if ckpt else ""
        )
        saved, peak = r["act_bytes_per_sample"] / GIB, r["forward_peak_bytes_per_sample"] / GIB
        one_pass, chosen = estimate(r, train["batch_size"], False), estimate(r, micro, ckpt)
        lines.append(
            f"| {r['model']} | {r['strategy']} | {r['trainable_params'] / 1e6:.2f} M | {saved:.2f} GiB | "
            f"{peak:.2f} GiB | {one_pass:.1f} GiB | {setting} | {chosen:.1f} GiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config/paper.yaml")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--check", action="store_true", help="compare meta and real-CPU counts (SAM-Med2D)")
    parser.add_argument("--from-json", help="print the markdown table of rows written earlier by --json")
    args = parser.parse_args()
    config = load_config(args.config)
    ft = config["finetune"]
    if args.from_json:
        with open(args.from_json) as f:
            print(markdown(json.load(f), ft))
        return
    rows = []
    for name in ("medsam", "sam_med2d"):
        strategies = ft["models"].get(name, {}).get("strategies") or []
        for strategy in strategies:
            if strategy == "zero_shot":
                continue
            row = measure(name, strategy, ft)
            row["estimate_gib"] = {
                f"micro{m}{'_ckpt' if c else ''}": round(estimate(row, m, c), 1)
                for m in (32, 8, 4, 1)
                for c in (False, True)
            }
            rows.append(row)
            est = row["estimate_gib"]
            print(
                f"{name:<10} {strategy:<10} trainable {row['trainable_params'] / 1e6:7.2f} M  "
                f"saved/sample {row['act_bytes_per_sample'] / GIB:6.2f} GiB "
                f"peak/sample {row['forward_peak_bytes_per_sample'] / GIB:6.2f} GiB "
                f"(ckpt {row['act_bytes_per_sample_ckpt'] / GIB:5.2f} "
                f"+ block {row['max_block_bytes'] / GIB:4.2f})  "
                f"batch 32: {est['micro32']:7.1f} GiB, micro 4: {est['micro4']:6.1f}, "
                f"micro 4 + ckpt: {est['micro4_ckpt']:5.1f}, micro 1 + ckpt: {est['micro1_ckpt']:5.1f}"
            )
    if args.check:
        torch.set_num_threads(1)
        meta = measure("sam_med2d", "full", ft)
        real = measure("sam_med2d", "full", ft, device="cpu")
        print(f"check sam_med2d full: meta {meta['act_bytes_per_sample']} B, "
              f"cpu {real['act_bytes_per_sample']} B")
    print(markdown(rows, ft))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
