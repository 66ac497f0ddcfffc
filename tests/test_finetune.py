"""Fine-tuning: training lowers the loss, resume == uninterrupted, checkpoint round trip, LoRA determinism,
strict loading, settings resolution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from medfm_robust.boxes import require_box_tensor
from medfm_robust.config import load_config
from medfm_robust.errors import CheckpointError, ConfigError, DataError
from medfm_robust.io import encode_png
from medfm_robust.seeding import rng_for
from medfm_robust.seg import models
from medfm_robust.seg.augment import AugmentConfig, augment_pair, load_split, make_batch
from medfm_robust.seg.checkpoint import load_for_eval, read_finetuned
from medfm_robust.seg.finetune import finetune_run, run_settings, state_path_for
from medfm_robust.seg.losses import hard_dice, seg_loss
from medfm_robust.seg.strategies import StrategySpec, apply_strategy, has_lora, trained_state
from medfm_robust.seg.trainer import TrainConfig, evaluate, lr_factor, train

SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is fastest and avoids oversubscribing a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with a bright ellipse (the target) and a dimmer distractor disc."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img = rng.normal(60, 12, (SIZE, SIZE))
    cy, cx = rng.uniform(18, 46, 2)
    ry, rx = rng.uniform(6, 14, 2)
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    img[mask] += 120
    dy, dx = (cy + 32) % SIZE, (cx + 32) % SIZE
    img[(yy - dy) ** 2 + (xx - dx) ** 2 <= 25] += 60
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _write_shard(path: Path, dataset: str, split: str, n: int) -> None:
    rows = []
    for i in range(n):
        iid = f"{split}{i:03d}"
        img, mask = _sample(rng_for("test-shard", dataset, iid))
        ys, xs = np.nonzero(mask)
        rows.append(
            {
                "image_id": iid,
                "dataset": dataset,
                "modality": "ct",
                "split": split,
                "image_png": encode_png(img),
                "mask_png": encode_png(mask.astype(np.uint8) * 255),
                "box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
                "height": SIZE,
                "width": SIZE,
                "channels": 1,
                "source": "synthetic",
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    out = {}
    for split, n in (("train", 8), ("val", 4)):
        out[split] = root / f"{split}.parquet"
        _write_shard(out[split], "synth", split, n)
    return out


FAST = {"epochs": 3, "batch_size": 4, "lr": 3e-3, "warmup_fraction": 0.2, "eval_batch_size": 8}


def _settings(strategy: str, **train_kw: object) -> dict:
    return {"train": {**FAST, **train_kw}, "strategy": StrategySpec.from_config(strategy, {}).structure()}


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-SAM base checkpoint (seeded random weights) as the workflow's pretrained file would be."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = models.build_model("tiny_sam")
    path = tmp_path_factory.mktemp("base") / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_loss_and_dice_on_known_values() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1
    perfect = target * 40 - 20
    assert float(hard_dice(perfect, target)) == 1.0
    assert float(seg_loss(perfect, target)) < 1e-6
    half = torch.full((1, 1, 4, 4), -20.0)
    half[..., :2, :1] = 20  # 2 of 4 foreground pixels, no false positives: Dice 2*2/(2+4)
    assert float(hard_dice(half, target)) == pytest.approx(2 / 3)
    # empty prediction on an empty target scores 1 (documented convention)
    assert float(hard_dice(torch.full((1, 1, 2, 2), -1.0), torch.zeros(1, 1, 2, 2))) == 1.0
    # weights: pure BCE of zero logits is log 2
    assert float(seg_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), bce_weight=1, dice_weight=0)) == (
        pytest.approx(np.log(2), rel=1e-6)
    )


def test_warmup_cosine_schedule() -> None:
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)


def test_augmentation_moves_mask_with_image_and_is_seeded() -> None:
    img, mask = _sample(np.random.default_rng(0))
    x = torch.from_numpy(np.repeat(img[None], 3, 0)).float() / 255
    m = torch.from_numpy(mask)
    cfg = AugmentConfig(hflip=1, vflip=1, rot90=1, intensity=0)
    xa, ma = augment_pair(x, m, cfg, np.random.default_rng(3))
    xb, mb = augment_pair(x, m, cfg, np.random.default_rng(3))
    assert torch.equal(xa, xb) and torch.equal(ma, mb)
    # the bright pixels (image) are exactly the mask pixels after the same geometric transform
    assert torch.equal(xa[0] > 150 / 255, ma) == torch.equal(x[0] > 150 / 255, m)
    assert int(ma.sum()) == int(m.sum()) and not torch.equal(ma, m)


def test_load_split_and_batches(shards: dict[str, Path]) -> None:
    data = load_split(shards["train"])
    assert data.images.shape == (8, 3, SIZE, SIZE) and data.images.dtype == torch.uint8
    x, m, b = make_batch(data, [0, 1], augment=None, epoch=0, global_seed=0)
    assert x.shape == (2, 3, SIZE, SIZE) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(b[0], require_box_tensor(m[0] > 0))
    x2, _, b2 = make_batch(data, [0, 1], augment=AugmentConfig(), epoch=1, global_seed=0)
    x3, _, b3 = make_batch(data, [1, 0], augment=AugmentConfig(), epoch=1, global_seed=0)
    assert torch.equal(x2[0], x3[1]) and torch.equal(b2[1], b3[0])  # per-image draws, not call order
    with pytest.raises(DataError, match="not found"):
        load_split(shards["train"].with_name("missing.parquet"))


def _tiny(base_ckpt: Path, strategy: str, seed: int = 0) -> torch.nn.Module:
    model = models.build_model("tiny_sam", checkpoint=base_ckpt)
    torch.manual_seed(seed)
    apply_strategy(model, StrategySpec.from_config(strategy, {}))
    return model


def test_short_training_lowers_loss(shards: dict[str, Path], base_ckpt: Path) -> None:
    tr, va = load_split(shards["train"]), load_split(shards["val"])
    model = _tiny(base_ckpt, "full")
    before = evaluate(model, tr)[0]
    result = train(
        model, tr, va, TrainConfig.from_config({**FAST, "epochs": 4}), run_key=("t", "loss"), progress=False
    )
    after = evaluate(model, tr)[0]
    assert after < before
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.finished and 1 <= result.best_epoch <= 4


def test_resume_equals_uninterrupted(shards: dict[str, Path], base_ckpt: Path, tmp_path: Path) -> None:
    tr, va = load_split(shards["train"]), load_split(shards["val"])
    cfg = TrainConfig.from_config(FAST)
    key = ("tiny_sam", "synth", "lora")  # LoRA dropout draws from the torch RNG: its state must resume too
    ref_model = _tiny(base_ckpt, "lora")
    ref = train(ref_model, tr, va, cfg, run_key=key, state_path=tmp_path / "a.pt", progress=False)

    first = _tiny(base_ckpt, "lora")
    part = train(first, tr, va, cfg, run_key=key, state_path=tmp_path / "b.pt", stop_after=1, progress=False)
    assert not part.finished and len(part.history) == 1
    resumed_model = _tiny(base_ckpt, "lora", seed=123)  # a new process: other init, state file decides
    res = train(resumed_model, tr, va, cfg, run_key=key, state_path=tmp_path / "b.pt", progress=False)
    assert res.finished and len(res.history) == cfg.epochs
    final_ref, final_res = trained_state(ref_model), trained_state(resumed_model)
    assert final_ref.keys() == final_res.keys()
    assert all(torch.equal(final_ref[k], final_res[k]) for k in final_ref)
    assert all(torch.equal(ref.best_state[k], res.best_state[k]) for k in ref.best_state)
    assert [r["val_dice"] for r in ref.history] == [r["val_dice"] for r in res.history]

    # a state written for other settings is ignored, not resumed
    other = _tiny(base_ckpt, "lora")
    again = train(
        other,
        tr,
        va,
        TrainConfig.from_config({**FAST, "lr": 1e-3}),
        run_key=key,
        state_path=tmp_path / "b.pt",
        stop_after=1,
        progress=False,
    )
    assert len(again.history) == 1


def _run(tmp_path: Path, shards: dict[str, Path], base_ckpt: Path, strategy: str, **kw: object) -> Path:
    out = tmp_path / "tiny_sam" / "synth" / f"{strategy}.safetensors"
    finetune_run(
        model_name="tiny_sam",
        base_checkpoint=base_ckpt,
        dataset="synth",
        strategy=strategy,
        train_shard=shards["train"],
        val_shard=shards["val"],
        checkpoint_out=out,
        log_csv=out.with_name(f"{strategy}_history.csv"),
        curve_png=out.with_name(f"{strategy}_curve.png"),
        settings=_settings(strategy, **kw),
        device="cpu",
        progress=False,
    )
    return out


@pytest.mark.parametrize("strategy", ["dec_only", "lora", "adapter"])
def test_checkpoint_round_trip(
    shards: dict[str, Path], base_ckpt: Path, tmp_path: Path, strategy: str
) -> None:
    out = _run(tmp_path, shards, base_ckpt, strategy)
    tensors, meta = read_finetuned(out)
    assert (
        meta["strategy"] == strategy
        and meta["base_checkpoint_sha256"]
        == models.build_model("tiny_sam", checkpoint=base_ckpt).checkpoint_hash
    )
    assert meta["trainable_params"] == sum(t.numel() for t in tensors.values())
    assert 1 <= meta["best_epoch"] <= FAST["epochs"] and 0 <= meta["val_dice"] <= 1
    assert state_path_for(out).is_file()
    history = out.with_name(f"{strategy}_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss") and len(history) == 1 + FAST["epochs"]
    assert out.with_name(f"{strategy}_curve.png").read_bytes()[:4] == b"\x89PNG"
    if strategy == "lora":
        assert all(".lora_A." in k or ".lora_B." in k for k in tensors)
        assert len(tensors) == 2 * 2 * 2

    # reference: base model + best tensors, LoRA unmerged, eval mode
    ref = models.build_model("tiny_sam", checkpoint=base_ckpt)
    apply_strategy(ref, StrategySpec.from_config(strategy, meta["strategy_settings"]))
    from medfm_robust.seg.strategies import restore_trained_state

    restore_trained_state(ref, tensors, source="test")
    ref.eval()
    model = load_for_eval("tiny_sam", base_ckpt, out, strategy)
    assert not model.training and not has_lora(model)
    assert not any(p.requires_grad for p in model.parameters())
    data = load_split(shards["val"])
    x, _, b = make_batch(data, list(range(len(data))), augment=None, epoch=0, global_seed=0)
    with torch.no_grad():
        a, c = ref(x, b), model(x, b)
    if strategy == "lora":  # merged weights: same function up to float rounding
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)
    else:
        assert torch.equal(a, c)
    assert torch.equal(a > 0, c > 0)
    # the same Dice as recorded at selection time
    assert evaluate(model, data)[1] == pytest.approx(meta["val_dice"], abs=1e-6)


def test_lora_evaluation_is_deterministic(shards: dict[str, Path], base_ckpt: Path, tmp_path: Path) -> None:
    out = _run(tmp_path, shards, base_ckpt, "lora", epochs=2)
    data = load_split(shards["val"])
    x, _, b = make_batch(data, list(range(len(data))), augment=None, epoch=0, global_seed=0)
    model = load_for_eval("tiny_sam", base_ckpt, out, "lora")
    with torch.no_grad():
        first, second = model(x, b), model(x, b)
    assert torch.equal(first, second)
    # the unmerged LoRA model in train mode is stochastic (dropout 0.1): eval mode is what removes it
    unmerged = models.build_model("tiny_sam", checkpoint=base_ckpt)
    from medfm_robust.seg.checkpoint import apply_finetuned

    apply_finetuned(unmerged, out)
    unmerged.train()
    with torch.no_grad():
        assert not torch.equal(unmerged(x, b), unmerged(x, b))
        unmerged.eval()
        assert torch.equal(unmerged(x, b), unmerged(x, b))


def test_strict_loading_errors(shards: dict[str, Path], base_ckpt: Path, tmp_path: Path) -> None:
    out = _run(tmp_path, shards, base_ckpt, "dec_only", epochs=1)
    with pytest.raises(CheckpointError, match="not found"):
        load_for_eval("tiny_sam", base_ckpt, tmp_path / "nope.safetensors", "dec_only")
    with pytest.raises(CheckpointError, match="not 'lora'"):
        load_for_eval("tiny_sam", base_ckpt, out, "lora")
    with pytest.raises(CheckpointError, match="needs a fine-tuned checkpoint"):
        load_for_eval("tiny_sam", base_ckpt, None, "dec_only")
    # a file with a key removed (sidecar hash updated so that only the key check can catch it)
    from safetensors.torch import load_file, save_file

    from medfm_robust.io import sha256_file

    tensors = load_file(str(out))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    bad = tmp_path / "bad" / "dec_only.safetensors"
    bad.parent.mkdir()
    save_file(tensors, str(bad))
    meta = json.loads(out.with_suffix(".json").read_text())
    meta["checkpoint_sha256"] = sha256_file(bad)
    bad.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=dropped.replace(".", r"\.")):
        load_for_eval("tiny_sam", base_ckpt, bad, "dec_only")
    # a tampered file (hash differs from the sidecar)
    bad.write_bytes(out.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_for_eval("tiny_sam", base_ckpt, bad, "dec_only")
    # another base checkpoint than the one fine-tuned from
    from safetensors.torch import save_file as save

    torch.manual_seed(5)
    other = tmp_path / "other.safetensors"
    save({k: v.contiguous() for k, v in models.build_model("tiny_sam").state_dict().items()}, str(other))
    with pytest.raises(CheckpointError, match="base checkpoint"):
        load_for_eval("tiny_sam", other, out, "dec_only")


def test_fine_tuning_beats_zero_shot_on_validation(
    shards: dict[str, Path], base_ckpt: Path, tmp_path: Path
) -> None:
    out = _run(tmp_path, shards, base_ckpt, "full", epochs=4)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["val_dice"] > meta["val_dice_zero_shot"]


def test_run_settings_isolate_strategies(repo: Path) -> None:
    cfg = load_config(repo / "config" / "config.yaml")["finetune"]
    cfg["models"] = {"tiny_sam": {"train": {"epochs": 2}, "overrides": {"lora": {"lora": {"r": 4}}}}}
    before = {s: run_settings(cfg, "tiny_sam", s) for s in ("full", "lora", "enc_only")}
    assert before["lora"]["strategy"]["lora"]["r"] == 4 and before["full"]["train"]["epochs"] == 2
    cfg["strategies"]["lora"] = {"lora": {"r": 8, "alpha": 16}, "train": {"lr": 0.5}}
    after = {s: run_settings(cfg, "tiny_sam", s) for s in ("full", "lora", "enc_only")}
    assert after["full"] == before["full"] and after["enc_only"] == before["enc_only"]
    assert after["lora"]["train"]["lr"] == 0.5 and after["lora"]["strategy"]["lora"]["r"] == 4
    with pytest.raises(ConfigError, match="not configured"):
        run_settings(cfg, "medsam", "full")
    with pytest.raises(ConfigError, match="not a trained strategy"):
        run_settings(cfg, "tiny_sam", "zero_shot")


class _ToyEncoder(torch.nn.Module):
    """Two conv blocks (``.blocks``, as a SAM ViT's) so activation checkpointing has blocks to wrap."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            [torch.nn.Sequential(torch.nn.Conv2d(c, 6, 3, padding=1), torch.nn.GELU()) for c in (3, 6)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class _ToySegmenter(torch.nn.Module):
    """A float64 box-prompted segmenter with the trainer's interface (SAM's float32-only prompt encoder
    cannot run in float64; float32 runs agree only to ~5e-6 after a few AdamW steps)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.image_encoder = _ToyEncoder()
        self.prompt_encoder = torch.nn.Linear(4, 6)
        self.mask_decoder = torch.nn.Conv2d(6, 1, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.double()

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(x01)

    def decode(self, emb: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        gate = self.prompt_encoder(boxes / size[0])[:, :, None, None]
        return self.mask_decoder(emb * gate)

    def forward(self, x01: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x01), boxes, tuple(x01.shape[-2:]))


def _train_double(shards: dict[str, Path], **train_kw: object) -> dict[str, torch.Tensor]:
    """Train the float64 toy segmenter for 2 epochs; returns its weights."""
    tr, va = load_split(shards["train"]), load_split(shards["val"])
    model = _ToySegmenter()
    cfg = TrainConfig.from_config({**FAST, "epochs": 2, "amp": False, "lr": 1e-2, **train_kw})
    train(model, tr, va, cfg, run_key=("t", "accumulate"), progress=False)
    return trained_state(model)


def test_micro_batches_give_the_weights_of_one_large_batch(shards: dict[str, Path]) -> None:
    # 8 training images at batch 6: steps of 6 and 2 images; micro-batches 4 (slices 4 + 2, then 2) and 1
    whole = _train_double(shards, batch_size=6)
    for micro in (4, 1):
        sliced = _train_double(shards, batch_size=6, micro_batch_size=micro)
        assert max(float((whole[k] - sliced[k]).abs().max()) for k in whole) < 1e-9
    # the comparison can tell batches apart: a real batch of 4 ends elsewhere
    smaller = _train_double(shards, batch_size=4)
    assert max(float((whole[k] - smaller[k]).abs().max()) for k in whole) > 1e-4
    with pytest.raises(ConfigError, match=r"micro_batch_size \(8\) must be between 1 and batch_size \(6\)"):
        TrainConfig.from_config({"batch_size": 6, "micro_batch_size": 8})


def test_activation_checkpointing_same_gradients_less_saved_memory(base_ckpt: Path) -> None:
    from medfm_robust.seg.strategies import encoder_blocks
    from medfm_robust.seg.trainer import activation_checkpointing

    model = _tiny(base_ckpt, "full").train()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, SIZE, SIZE, generator=gen)
    boxes = torch.tensor([[8.0, 8.0, 40.0, 50.0], [20.0, 4.0, 60.0, 30.0]])

    def grads_and_saved_bytes() -> tuple[dict[str, torch.Tensor], int]:
        saved = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        model.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = seg_loss(model(x, boxes), torch.zeros(2, 1, SIZE, SIZE))
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, saved[0]

    plain, plain_bytes = grads_and_saved_bytes()
    with activation_checkpointing(model):
        ckpt, ckpt_bytes = grads_and_saved_bytes()
    assert plain.keys() == ckpt.keys()
    assert all(torch.allclose(plain[n], ckpt[n], rtol=1e-5, atol=1e-7) for n in plain)
    assert ckpt_bytes < 0.7 * plain_bytes  # the blocks' activations are recomputed, not stored
    assert all("forward" not in vars(b) for b in encoder_blocks(model.image_encoder))  # restored


def test_trainer_activation_checkpointing_same_weights(shards: dict[str, Path]) -> None:
    plain = _train_double(shards, batch_size=4, epochs=1)
    ckpt = _train_double(shards, batch_size=4, epochs=1, activation_checkpointing=True)
    assert max(float((plain[k] - ckpt[k]).abs().max()) for k in plain) < 1e-9


def test_encoder_lr_scale_as_the_original_rule(shards: dict[str, Path], base_ckpt: Path) -> None:
    from medfm_robust.seg.trainer import param_groups

    model = _tiny(base_ckpt, "full")
    groups = param_groups(model, TrainConfig.from_config({**FAST, "encoder_lr_scale": 0.1}))
    names = {id(p): n for n, p in model.named_parameters()}
    assert "lr" not in groups[0] and groups[1]["lr"] == pytest.approx(FAST["lr"] * 0.1)
    assert {names[id(p)].split(".")[0] for p in groups[1]["params"]} == {"image_encoder", "prompt_encoder"}
    assert len(param_groups(model, TrainConfig.from_config(FAST))) == 1
    # scale 0: both encoders keep their weights, the decoder trains
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig.from_config({**FAST, "epochs": 1, "encoder_lr_scale": 0.0})
    tr, va = load_split(shards["train"]), load_split(shards["val"])
    train(model, tr, va, cfg, run_key=("t", "els"), progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "encoder" in k)
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("mask_decoder."))


def test_training_seeds_give_different_weights(
    shards: dict[str, Path], base_ckpt: Path, tmp_path: Path
) -> None:
    """finetune.seeds: seed 0 is the single-seed run; seed 1 starts the new (LoRA) weights, the batch order
    and the augmentation from other draws, so its trained weights differ; both sidecars record the seed."""
    runs = {}
    for seed in (0, 1):
        out = tmp_path / "tiny_sam" / "synth" / "lora" / f"seed{seed}.safetensors"
        finetune_run(
            model_name="tiny_sam",
            base_checkpoint=base_ckpt,
            dataset="synth",
            strategy="lora",
            train_shard=shards["train"],
            val_shard=shards["val"],
            checkpoint_out=out,
            log_csv=out.with_name(f"seed{seed}_history.csv"),
            curve_png=out.with_name(f"seed{seed}_curve.png"),
            settings=_settings("lora", epochs=1),
            train_seed=seed,
            device="cpu",
            progress=False,
        )
        runs[seed] = read_finetuned(out)
        assert runs[seed][1]["train_seed"] == seed and state_path_for(out).name == f".seed{seed}.state.pt"
    single = read_finetuned(_run(tmp_path, shards, base_ckpt, "lora", epochs=1))[0]
    (t0, _), (t1, _) = runs[0], runs[1]
    assert t0.keys() == t1.keys() == single.keys()
    assert all(torch.equal(t0[k], single[k]) for k in t0)  # seed 0 == a run without a training seed
    assert all(not torch.equal(t0[k], t1[k]) for k in t0)
