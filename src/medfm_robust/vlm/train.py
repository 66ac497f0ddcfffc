"""Supervised training of image-text-to-text models on (image, prompt, answer) examples.

Shared by the tiny-model training (:func:`train_tiny`, all weights) and the LoRA grounding fine-tuning
(:mod:`medfm_robust.vlm.grounding_lora`). The loss covers only the response tokens: each example is the
chat-template prefix (system + user turn + generation prompt, rendered and tokenised exactly as at inference)
followed by the rendered assistant answer; prefix and padding labels are ``-100``. Batches are right-padded
for training (causal attention, positions from 0) and the loss is the mean over all response tokens of the
batch. Shuffling is seeded per epoch from the identity ``(purpose, model, epoch)``; dropout is seeded per
step, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medfm_robust.config import with_defaults
from medfm_robust.errors import DataError
from medfm_robust.seeding import rng_for, seed_for

log = logging.getLogger(__name__)

# Default of vlm.tiny_training.vision_lr_scale (the vision tower's learning rate relative to ``lr``).


@dataclass(frozen=True)
class Example:
    """One supervised example: ``image`` ``H x W`` or ``H x W x 3`` uint8/uint16, prompt and target answer."""

    image: np.ndarray
    prompt: str
    answer: str
    task: str
    sample_id: str = ""


def render_pair(processor: Any, prompt: str, answer: str, system_prompt: str | None = None,
                image_position: str = "before") -> tuple[str, str]:
    """``(prefix, response)`` texts: the inference-time prompt and the rendered assistant turn after it."""
    image = {"type": "image"}
    text = {"type": "text", "text": prompt}
    user = {"role": "user", "content": [image, text] if image_position == "before" else [text, image]}
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append(user)
    prefix = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    reply = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
    full = processor.apply_chat_template([*messages, reply], add_generation_prompt=False, tokenize=False)
    if not full.startswith(prefix) or len(full) == len(prefix):
        raise DataError("chat template: the rendered conversation does not extend the generation prompt")
    return prefix, full[len(prefix):]


def encode_examples(processor: Any, examples: Sequence[Example], *, system_prompt: str | None = None,
                    image_position: str = "before", max_answer_tokens: int = 256) -> list[dict[str, Any]]:
    """Tokenise each example once: ``input_ids``/``labels``/``token_type_ids`` (1-D) and ``pixel_values``."""
    from medfm_robust.vlm.models import to_pil_rgb

    tok = processor.tokenizer
    encoded = []
    for ex in examples:
        prefix, response = render_pair(processor, ex.prompt, ex.answer, system_prompt, image_position)
        enc = processor(text=[prefix], images=[[to_pil_rgb(ex.image)]], return_tensors="pt")
        resp = tok(response, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        resp = resp[:max_answer_tokens]
        ids = enc["input_ids"][0]
        item = {
            "input_ids": np.concatenate([ids.numpy(), resp.numpy()]),
            "labels": np.concatenate([np.full(len(ids), -100), resp.numpy()]),
            "pixel_values": enc["pixel_values"][0].numpy(),
        }
        if "token_type_ids" in enc:
            item["token_type_ids"] = np.concatenate([enc["token_type_ids"][0].numpy(), np.zeros(len(resp))])
        encoded.append(item)
    return encoded


def collate(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-padded training batch of encoded examples (tensors)."""
    import torch

    length = max(len(it["input_ids"]) for it in items)
    n = len(items)
    ids = np.full((n, length), pad_id, dtype=np.int64)
    labels = np.full((n, length), -100, dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.int64)
    ttype = np.zeros((n, length), dtype=np.int64)
    for i, it in enumerate(items):
        k = len(it["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = it["input_ids"], it["labels"], 1
        if "token_type_ids" in it:
            ttype[i, :k] = it["token_type_ids"]
    batch = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(labels),
        "pixel_values": torch.from_numpy(np.stack([it["pixel_values"] for it in items])),
    }
    if "token_type_ids" in items[0]:
        batch["token_type_ids"] = torch.from_numpy(ttype)
    return batch


def epoch_order(n: int, purpose: str, model_name: str, epoch: int, seed: int) -> np.ndarray:
    """The permutation of ``n`` examples for one epoch (depends only on its identity)."""
    return rng_for("vlm_train_order", purpose, model_name, epoch, global_seed=seed).permutation(n)


def run_epoch(model: Any, optimizer: Any, encoded: Sequence[dict[str, Any]], *, pad_id: int, batch_size: int,
              purpose: str, model_name: str, epoch: int, seed: int, grad_clip: float | None = 1.0,
              dtype: Any = None) -> float:
    """One epoch of response-only cross-entropy over ``encoded``; returns the mean batch loss."""
    import torch
    from tqdm import tqdm

    model.train()
    order = epoch_order(len(encoded), purpose, model_name, epoch, seed)
    losses = []
    steps = range(0, len(order), batch_size)
    for step, start in enumerate(tqdm(steps, desc=f"{model_name} {purpose} epoch {epoch}", leave=False)):
        torch.manual_seed(seed_for("vlm_train_step", purpose, model_name, epoch, step, global_seed=seed))
        batch = collate([encoded[i] for i in order[start:start + batch_size]], pad_id)
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        if dtype is not None:
            batch["pixel_values"] = batch["pixel_values"].to(dtype)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


def param_groups(model: Any, lr: float, vision_lr_scale: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: the vision encoder (modules named ``vision_tower``) at
    ``lr x vision_lr_scale``, everything else (projector, language model) at ``lr``; frozen parameters are
    left out.

    Why: a tiny tower trained from scratch at the language model's rate drifts. LLaVA hands the projector
    CLIP's raw last-layer residual stream (no final LayerNorm), which then grows several-fold within an
    epoch or two; the projector's GELU inputs saturate and the image tokens swamp the text embeddings, so
    clean VQA stalls near chance. Real VLM recipes likewise freeze the vision encoder or train it slower.
    """
    vision, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (vision if "vision_tower" in name.split(".") else rest).append(p)
    groups = [{"params": rest, "lr": lr}]
    if vision:
        groups.append({"params": vision, "lr": lr * vision_lr_scale})
    return groups


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` onto ``final`` (removing an old ``final``)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def save_folder(out_dir: str | Path, write: Callable[[Path], None]) -> None:
    """Write a folder atomically: ``write(tmp)`` fills a hidden sibling, which then replaces ``out_dir``."""
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    replace_dir(tmp, out)


def _train_until_target(model: Any, processor: Any, optimizer: Any, encoded: Any, settings: dict[str, Any],
                        *, name: str, seed: int, validate: Callable[[Any, Any], dict[str, float]] | None,
                        target: float) -> tuple[list[dict[str, float]], bool]:
    """The epochs of :func:`train_tiny`: (history rows, whether clean VQA reached ``target`` x chance)."""
    history: list[dict[str, float]] = []
    reached = False
    for epoch in range(int(settings["epochs"])):
        loss = run_epoch(model, optimizer, encoded, pad_id=processor.tokenizer.pad_token_id,
                         batch_size=int(settings["batch_size"]), purpose="tiny", model_name=name,
                         epoch=epoch, seed=seed)
        row: dict[str, float] = {"epoch": epoch, "loss": loss}
        if validate is not None and epoch + 1 >= int(settings["min_epochs"]):
            model.eval()
            row.update(validate(model, processor))
            reached = row["accuracy"] >= target * row["chance"]
        history.append(row)
        log.info("%s epoch %d: %s", name, epoch, {k: round(v, 4) for k, v in row.items()})
        if reached:
            break
    if validate is not None and not reached:
        log.warning("%s: clean VQA accuracy stayed below %.1f x chance after %d epochs", name, target,
                    len(history))
    return history, reached


def train_tiny(
    name: str,
    spec: dict[str, Any],
    train_examples: Sequence[Example],
    out_dir: str | Path,
    settings: dict[str, Any],
    *,
    seed: int = 0,
    tokenizer_texts: Sequence[str] = (),
    validate: Callable[[Any, Any], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Build, train and save tiny model ``name`` (config entry ``spec``: ``family``, ``arch``) in ``out_dir``.

    ``settings`` (``vlm.tiny_training``): ``vocab_size``, ``epochs`` (maximum), ``min_epochs``,
    ``batch_size``, ``lr``, ``vision_lr_scale`` (vision tower at ``lr x vision_lr_scale``, see
    :func:`param_groups`), ``weight_decay``, ``stop_at_chance_multiple``. After each epoch from
    ``min_epochs`` on, ``validate(model, processor)`` returns ``{"accuracy", "chance"}`` of clean VQA on
    held-out examples; training stops once accuracy >= ``stop_at_chance_multiple`` x chance. The folder
    holds the ``save_pretrained`` files only (its hash is the weights' identity); the returned record
    (history, timing, whether the bar was reached) is for the caller's sidecar.
    """
    import torch

    from medfm_robust.vlm.tiny import TINY_FAMILIES, build_tiny, save_tiny

    if not train_examples:
        raise DataError(f"vlm tiny model '{name}': no training examples")
    spec, settings = with_defaults("vlm.models.*", spec), with_defaults("vlm.tiny_training", settings)
    family = spec.get("family") or TINY_FAMILIES.get(name)
    if family is None:
        raise DataError(f"config key 'vlm.models.{name}.family': required for a tiny model")
    t0 = time.perf_counter()
    texts = [*tokenizer_texts, *(e.prompt for e in train_examples), *(e.answer for e in train_examples)]
    torch.manual_seed(seed_for("vlm_tiny_init", name, global_seed=seed))
    model, processor = build_tiny(family, texts, spec["arch"], int(settings["vocab_size"]))
    system_prompt, position = spec["system_prompt"], spec["image_position"]
    encoded = encode_examples(processor, train_examples, system_prompt=system_prompt, image_position=position)
    optimizer = torch.optim.AdamW(
        param_groups(model, float(settings["lr"]), float(settings["vision_lr_scale"])),
        weight_decay=float(settings["weight_decay"]))
    target = float(settings["stop_at_chance_multiple"])
    history, reached = _train_until_target(model, processor, optimizer, encoded, settings, name=name,
                                           seed=seed, validate=validate, target=target)
    save_folder(out_dir, lambda tmp: save_tiny(model.eval(), processor, tmp))
    return {
        "model": name,
        "family": family,
        "n_train_examples": len(train_examples),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "epochs_run": len(history),
        "history": history,
        "target_chance_multiple": target,
        "reached_target": reached if validate is not None else None,
        "seconds": round(time.perf_counter() - t0, 2),
        "settings": settings,
        "arch": spec["arch"],
    }


# ----------------------------------------------------------------------------- sample tables -> examples


def examples_from_table(df: Any, task: str, convention: str, *, vqa_target: str = "letter",
                        split: str | None = None) -> list[Example]:
    """Training examples of one sample table (rows of ``split`` if given).

    Prompts come from :func:`~medfm_robust.vlm.prompts.build_prompt` (exactly the evaluation prompt);
    targets from :func:`~medfm_robust.vlm.prompts.target_text` (grounding boxes in ``convention``), except
    that ``vqa_target='option_text'`` trains VQA on the correct option's text (the parser accepts both).
    """
    from medfm_robust.io import decode_png
    from medfm_robust.vlm.prompts import build_prompt, target_text

    rows = df if split is None else df[df["split"] == split]
    out = []
    for rec in rows.to_dict("records"):
        answer = str(rec["reference"]) if task == "vqa" and vqa_target == "option_text" else target_text(
            task, rec, convention)
        image = decode_png(rec["image_png"], source=f"{rec['dataset']}/{rec['sample_id']}")
        out.append(Example(image, build_prompt(task, rec, convention), answer, task, str(rec["sample_id"])))
    return out


def vqa_validator(df: Any, *, system_prompt: str | None, image_position: str, max_new_tokens: int,
                  batch_size: int = 64) -> Callable[[Any, Any], dict[str, float]]:
    """A ``validate(model, processor)`` callback: greedy clean VQA accuracy on the rows of ``df`` (parsed
    with :func:`~medfm_robust.vlm.parsing.parse_answer`) and chance (mean of 1 / number of options)."""
    from medfm_robust.io import decode_png
    from medfm_robust.vlm.models import LocalVLM
    from medfm_robust.vlm.parsing import parse_answer
    from medfm_robust.vlm.prompts import build_prompt

    records = df.to_dict("records")
    if not records:
        raise DataError("vlm tiny training: no validation VQA samples (val split is empty)")
    images = [decode_png(r["image_png"]) for r in records]
    prompts = [build_prompt("vqa", r) for r in records]
    chance = float(np.mean([1.0 / len(r["options"]) for r in records]))

    def validate(model: Any, processor: Any) -> dict[str, float]:
        vlm = LocalVLM("validation", model, processor, revision="", batch_size=batch_size,
                       system_prompt=system_prompt, image_position=image_position)
        answers = vlm.generate(images, prompts, "vqa", max_new_tokens)
        hits = [parse_answer("vqa", a, r).value == r["answer"] for a, r in zip(answers, records, strict=True)]
        return {"accuracy": float(np.mean(hits)), "chance": chance}

    return validate


def train_tiny_from_tables(
    name: str,
    spec: dict[str, Any],
    training: dict[str, Any],
    tables: dict[str, str | Path],
    out_dir: str | Path,
    info_path: str | Path,
    *,
    max_new_tokens: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Train tiny model ``name`` on the ``train`` rows of the sample tables ``{task: path}`` (all tasks
    jointly), validate on the ``val`` VQA rows, save it to ``out_dir`` and the record to ``info_path``."""
    from medfm_robust.io import write_json_atomic
    from medfm_robust.vlm.datasets import read_samples
    from medfm_robust.vlm.models import box_convention

    spec, training = with_defaults("vlm.models.*", spec), with_defaults("vlm.tiny_training", training)
    convention = box_convention(name, spec)
    examples: list[Example] = []
    val = None
    for task in sorted(tables):
        df = read_samples(tables[task])
        examples += examples_from_table(df, task, convention, vqa_target=training["vqa_target"],
                                        split="train")
        if task == "vqa":
            val = df[df["split"] == "val"]
    validate = None
    if val is not None:
        validate = vqa_validator(val, system_prompt=spec["system_prompt"],
                                 image_position=spec["image_position"], max_new_tokens=max_new_tokens,
                                 batch_size=int(spec["batch_size"]))
    info = train_tiny(name, spec, examples, out_dir, training, seed=seed, validate=validate)
    info["tasks"] = sorted(tables)
    write_json_atomic(info_path, info)
    return info
