"""Robustness evaluation of one (model, strategy, dataset): clean, every perturbation shard, FGSM and PGD.

Two entry points, one per workflow job:

* :func:`evaluate_dataset` scores the clean test images once and every level of every given perturbation
  shard, writing ``clean.parquet`` and one ``{perturbation}.parquet`` each;
* :func:`evaluate_attacks` runs FGSM and PGD at every level and writes ``fgsm.parquet`` and ``pgd.parquet``.

Rows follow ``docs/ARCHITECTURE.md`` (segmentation metrics). Images are scored at their stored size
(prediction ``logit > 0`` against the ground-truth mask ``> 0``). Each distinct image goes through the image
encoder at most once per encoder weights (through :class:`medfm_robust.seg.cache.EmbeddingEncoder`); the
decoder runs in batches. The evaluated subset (:func:`select_image_ids`) is the same in every mode: test
images that have perturbed rows come first, then the others, each group in ``image_id`` order, cut to
``max_images`` (all when ``None``); the perturbation stage may perturb only some test images.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medfm_robust.errors import ConfigError, DataError
from medfm_robust.io import array_hash, decode_png, write_parquet_atomic
from medfm_robust.metrics.segmentation import METRIC_COLUMNS, NSD_TOLERANCE_PX, segmentation_scores
from medfm_robust.seg.attacks import ATTACKS, AttackSettings, run_attack
from medfm_robust.seg.cache import EmbeddingEncoder
from medfm_robust.seg.models import PromptableSegmenter, images_to_batch
from medfm_robust.seg.prompts import BoxJitter, box_from_mask, jitter_box

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class EvalSettings:
    """Settings of an evaluation job.

    ``batch_size``: images per encoder/decoder batch; ``max_images``: evaluated test images (None = all,
    see :func:`select_image_ids`); ``attack_max_images``: the first N of those are attacked (None = all);
    ``jitter``: box jitter; ``cache_dir``: embedding cache root (None disables it); ``device``: ``auto``
    (CUDA when available), ``cpu`` or ``cuda``; ``threads``: torch CPU threads (None = torch default);
    ``seed``: global seed (PGD random start); ``nsd_tolerance``: NSD tolerance in pixels.
    """

    batch_size: int = 16
    max_images: int | None = None
    attack_max_images: int | None = None
    jitter: BoxJitter = field(default_factory=BoxJitter)
    cache_dir: str | None = None
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    nsd_tolerance: float = NSD_TOLERANCE_PX


@dataclass(frozen=True)
class RunIdentity:
    """What is evaluated: model, strategy, checkpoints (``finetuned`` None for ``zero_shot``) and the training
    seed of the fine-tuned checkpoint (0 for ``zero_shot``, which is not trained)."""

    model: str
    strategy: str
    base_checkpoint: str | None
    finetuned: str | None = None
    train_seed: int = 0


@dataclass
class Sample:
    """One image to score: stored pixels, boolean GT mask, box prompt, row metadata and the stored values
    meaning black and white (the shard's ``value_range``; None only for 8-bit images)."""

    image_id: str
    image: np.ndarray
    mask: np.ndarray
    box: np.ndarray
    meta: dict[str, Any]
    image_hash: str = ""
    value_range: tuple[float, float] | None = None


# ----------------------------------------------------------------------------------------------------
# Inputs


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"segmentation.device '{device}' but no CUDA device is available")
    return torch.device(device)


def load_model(run: RunIdentity, device: torch.device) -> PromptableSegmenter:
    """The evaluated model in ``eval()`` mode: base checkpoint plus, for trained strategies, the fine-tuned
    tensors (through ``medfm_robust.seg.checkpoint.load_for_eval``, LoRA merged)."""
    from medfm_robust.seg.checkpoint import load_for_eval

    model = load_for_eval(run.model, run.base_checkpoint, run.finetuned, run.strategy, device=device)
    return model.eval()  # type: ignore[return-value]


def _read_table(path: str | Path, columns: Sequence[str]) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: shard not found")
    table = pd.read_parquet(p)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{p}: missing column(s) {', '.join(missing)}")
    return table


def row_value_range(
    row: Any, image: np.ndarray, src: str, default: tuple[float, float] | None = None
) -> tuple[float, float] | None:
    """A shard row's ``value_range`` column, checked (absent or null: ``default``, which only an 8-bit
    image may lack: its range is then [0, 255])."""
    from medfm_robust.intensity import check_value_range

    value = getattr(row, "value_range", None)
    if value is not None:
        return check_value_range([float(v) for v in value], f"{src} value_range")
    if default is None and image.dtype != np.uint8:
        raise DataError(f"{src}: {image.dtype} image without a value_range column (re-run the ingestion)")
    return default


def select_image_ids(
    test_shard: str | Path, perturbed: Sequence[str | Path], max_images: int | None
) -> list[str]:
    """The evaluated test images: those with rows in any ``perturbed`` shard first, then the others, each
    group sorted by ``image_id``, cut to ``max_images``. Rows of a perturbed shard for an image that is not
    in the test shard are a :class:`DataError`."""
    test_ids = sorted(set(_read_table(test_shard, ("image_id",))["image_id"]))
    known = set(test_ids)
    perturbed_ids: set[str] = set()
    for path in perturbed:
        ids = set(pd.read_parquet(path, columns=["image_id"])["image_id"]) if Path(path).is_file() else None
        if ids is None:
            raise DataError(f"{path}: shard not found")
        unknown = sorted(ids - known)
        if unknown:
            raise DataError(f"{path}: rows for image(s) not in the test shard {test_shard}: {unknown[:5]}")
        perturbed_ids |= ids
    ordered = [i for i in test_ids if i in perturbed_ids] + [i for i in test_ids if i not in perturbed_ids]
    return ordered if max_images is None else ordered[:max_images]


def load_test_samples(
    test_shard: str | Path, dataset: str, image_ids: Sequence[str] | None, jitter: BoxJitter
) -> list[Sample]:
    """Clean test images ``image_ids`` of ``dataset`` (all when None), sorted by id, with GT masks and boxes.

    The stored ``box`` must equal the tight box of the stored mask (the contract of the canonical shard).
    """
    table = _read_table(test_shard, ("image_id", "dataset", "modality", "image_png", "mask_png", "box"))
    if image_ids is not None:
        missing = sorted(set(image_ids) - set(table["image_id"]))
        if missing:
            raise DataError(f"{test_shard}: image(s) {missing[:5]} not in the test shard")
        table = table[table["image_id"].isin(set(image_ids))]
    table = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    if table.empty:
        raise DataError(f"{test_shard}: no test images for dataset {dataset}")
    samples = []
    for row in table.itertuples(index=False):
        src = f"{test_shard} [{row.image_id}]"
        image = decode_png(row.image_png, source=src)
        mask = decode_png(row.mask_png, source=src) > 0
        if mask.ndim != 2 or mask.shape != image.shape[:2]:
            raise DataError(f"{src}: mask shape {mask.shape} differs from image {image.shape[:2]}")
        tight = box_from_mask(mask) if mask.any() else None
        if tight is None:
            raise DataError(f"{src}: empty ground-truth mask (no box prompt)")
        if [int(v) for v in row.box] != tight.tolist():
            raise DataError(
                f"{src}: stored box {list(row.box)} is not the tight box {tight.tolist()} of the mask"
            )
        box = jitter_box(tight, mask.shape, jitter, dataset, row.image_id)
        value_range = row_value_range(row, image, src)
        meta = {
            "modality": row.modality,
            "perturbation": "clean",
            "category": "clean",
            "level": 0,
            "ssim": 1.0,
            "in_band": True,
            "reachable": True,
        }
        samples.append(Sample(row.image_id, image, mask, box, meta, array_hash(image), value_range))
    return samples


def load_perturbed_samples(
    shard: str | Path, perturbation: str, clean: Mapping[str, Sample], jitter: BoxJitter, dataset: str
) -> list[Sample]:
    """Rows of a perturbed shard for the selected clean images, in shard order (image id, level).

    The GT mask is the shard's ``mask_png`` when set (label-moving types), else the clean mask; the box is the
    shard's ``box`` (the moved one for label-moving types, else it must equal the clean box). Rows of
    images outside ``clean`` are left out (see :func:`select_image_ids`). A label-moving row whose label left
    the image (null box, empty moved mask) has no box prompt and no object to segment: it is not scored,
    and a warning names it.
    """
    cols = (
        "image_id",
        "perturbation",
        "category",
        "level",
        "image_png",
        "mask_png",
        "box",
        "ssim",
        "in_band",
    )
    table = _read_table(shard, cols)
    selected = table[table["image_id"].isin(clean.keys())]
    names = set(table["perturbation"])
    if names and names != {perturbation}:
        raise DataError(f"{shard}: column 'perturbation' holds {sorted(names)}, expected '{perturbation}'")
    selected = selected.sort_values(["image_id", "level"], kind="stable")
    samples = []
    dropped = []
    for row in selected.itertuples(index=False):
        src = f"{shard} [{row.image_id} level {row.level}]"
        base = clean[row.image_id]
        if row.box is None:
            if row.mask_png is None or (decode_png(row.mask_png, source=src) > 0).any():
                raise DataError(f"{src}: null box without an empty moved mask")
            dropped.append(f"{row.image_id} L{row.level}")
            continue
        image = decode_png(row.image_png, source=src)
        if image.shape[:2] != base.mask.shape:
            raise DataError(
                f"{src}: image size {image.shape[:2]} differs from the clean image {base.mask.shape}"
            )
        box = np.asarray([int(v) for v in row.box], dtype=np.int64)
        if row.mask_png is not None:
            mask = decode_png(row.mask_png, source=src) > 0
            if mask.shape != base.mask.shape:
                raise DataError(
                    f"{src}: moved mask size {mask.shape} differs from the image {base.mask.shape}"
                )
            h, w = mask.shape
            if not (0 <= box[0] <= box[2] < w and 0 <= box[1] <= box[3] < h):
                raise DataError(f"{src}: box {box.tolist()} outside the {w} x {h} image")
            box_f = jitter_box(box, mask.shape, jitter, dataset, row.image_id)
        else:
            mask = base.mask
            if box.tolist() != box_from_mask(mask).tolist():
                raise DataError(f"{src}: box {box.tolist()} differs from the clean box of a non-moving type")
            box_f = base.box
        meta = {
            "modality": base.meta["modality"],
            "perturbation": perturbation,
            "category": row.category,
            "level": int(row.level),
            "ssim": float(row.ssim),
            "in_band": bool(row.in_band),
            "reachable": not str(getattr(row, "reason", "") or "").startswith("unreachable"),
        }
        value_range = row_value_range(row, image, src, base.value_range)  # else the clean image's
        samples.append(Sample(row.image_id, image, mask, box_f, meta, array_hash(image), value_range))
    if dropped:
        log.warning("%s: %d row(s) not scored, the label left the image: %s", shard, len(dropped), dropped)
    return samples


# ----------------------------------------------------------------------------------------------------
# Scoring


def _batches(samples: Sequence[Sample], batch_size: int) -> Iterator[list[Sample]]:
    """Consecutive batches of images of one size (order kept within each size group)."""
    groups: dict[tuple[int, ...], list[Sample]] = {}
    for s in samples:
        groups.setdefault(tuple(s.image.shape), []).append(s)
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            yield group[i : i + batch_size]


def _boxes(batch: Sequence[Sample]) -> torch.Tensor:
    return torch.from_numpy(np.stack([s.box for s in batch]).astype(np.float32))


@torch.no_grad()
def predict_masks(
    model: PromptableSegmenter, encoder: EmbeddingEncoder, batch: Sequence[Sample]
) -> np.ndarray:
    """Boolean predictions ``B x H x W`` for one batch (one encoder pass per image not in the cache)."""
    x = images_to_batch([s.image for s in batch], value_ranges=[s.value_range for s in batch])
    emb = encoder.encode(x, [s.image_hash for s in batch])
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    logits = model.decode(emb, _boxes(batch).to(emb.device), hw)
    return (logits[:, 0] > 0).cpu().numpy()


def _row(
    run: RunIdentity, dataset: str, checkpoint_hash: str, sample: Sample, scores: Mapping[str, float]
) -> dict[str, Any]:
    return {
        "model": run.model,
        "strategy": run.strategy,
        "train_seed": run.train_seed,
        "dataset": dataset,
        "image_id": sample.image_id,
        **sample.meta,
        **scores,
        "checkpoint_hash": checkpoint_hash,
    }


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    frame["level"] = frame["level"].astype("int8")
    frame["train_seed"] = frame["train_seed"].astype("int64")
    frame["in_band"] = frame["in_band"].astype(bool)
    frame["reachable"] = frame["reachable"].astype(bool)
    for col in ("ssim", "iou", "dice", "nsd", "hd95"):
        frame[col] = frame[col].astype("float64")
    return frame


def score_samples(
    model: PromptableSegmenter,
    encoder: EmbeddingEncoder,
    samples: Sequence[Sample],
    run: RunIdentity,
    dataset: str,
    settings: EvalSettings,
    desc: str,
) -> pd.DataFrame:
    """Metric rows of ``samples`` (in their order)."""
    scores: dict[int, dict[str, float]] = {}
    index = {id(s): i for i, s in enumerate(samples)}
    with tqdm(total=len(samples), desc=desc, unit="img", leave=False) as bar:
        for batch in _batches(samples, settings.batch_size):
            for s, pred in zip(batch, predict_masks(model, encoder, batch), strict=True):
                scores[index[id(s)]] = segmentation_scores(pred, s.mask, settings.nsd_tolerance)
            bar.update(len(batch))
    ckpt = getattr(model, "checkpoint_hash", "")
    return _frame([_row(run, dataset, ckpt, s, scores[i]) for i, s in enumerate(samples)])


def _prepare(
    run: RunIdentity, settings: EvalSettings, model: PromptableSegmenter | None
) -> tuple[PromptableSegmenter, torch.device]:
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    device = resolve_device(settings.device)
    model = load_model(run, device) if model is None else model.to(device).eval()
    log.info(
        "model %s / %s on %s (checkpoint %s)",
        run.model,
        run.strategy,
        device,
        getattr(model, "checkpoint_hash", "?")[:16],
    )
    return model, device


def evaluate_dataset(
    run: RunIdentity,
    dataset: str,
    test_shard: str | Path,
    perturbed: Mapping[str, str | Path],
    outputs: Mapping[str, str | Path],
    settings: EvalSettings,
    model: PromptableSegmenter | None = None,
) -> dict[str, int]:
    """Score the clean test images and every level of every perturbation shard; write one Parquet each.

    ``perturbed``: perturbation name -> shard path; ``outputs``: ``clean`` and every perturbation name ->
    Parquet path. Returns the number of rows written per output and the encoder statistics. ``model``: an
    already built model (tests, benchmarks) instead of loading ``run``'s checkpoints.
    """
    expected = {"clean", *perturbed}
    if set(outputs) != expected:
        raise DataError(f"outputs {sorted(outputs)} must be exactly {sorted(expected)}")
    model, _ = _prepare(run, settings, model)
    encoder = EmbeddingEncoder(model, settings.cache_dir)
    ids = select_image_ids(test_shard, list(perturbed.values()), settings.max_images)
    clean = load_test_samples(test_shard, dataset, ids, settings.jitter)
    by_id = {s.image_id: s for s in clean}
    counts: dict[str, int] = {}
    frame = score_samples(model, encoder, clean, run, dataset, settings, f"{dataset} clean")
    write_parquet_atomic(outputs["clean"], frame)
    counts["clean"] = len(frame)
    for name in tqdm(sorted(perturbed), desc=f"{run.model}/{run.strategy}/{dataset}", unit="shard"):
        samples = load_perturbed_samples(perturbed[name], name, by_id, settings.jitter, dataset)
        frame = score_samples(model, encoder, samples, run, dataset, settings, f"{dataset} {name}")
        write_parquet_atomic(outputs[name], frame)
        counts[name] = len(frame)
    n_eval = sum(counts.values())
    log.info(
        "%d image evaluations, %d encoder passes (%.3f per evaluated image), %d cache hits",
        n_eval,
        encoder.stats.encoded,
        encoder.stats.encoded / max(n_eval, 1),
        encoder.stats.cache_hits,
    )
    counts["encoder_passes"] = encoder.stats.encoded
    counts["cache_hits"] = encoder.stats.cache_hits
    return counts


def _ssim_u8(a: np.ndarray, b: np.ndarray) -> float:
    """The project's SSIM (``medfm_robust.perturb.ssim``) between two 8-bit images."""
    from medfm_robust.perturb.ssim import ssim

    return float(ssim(a, b))


def evaluate_attacks(
    run: RunIdentity,
    dataset: str,
    test_shard: str | Path,
    perturbed: Sequence[str | Path],
    outputs: Mapping[str, str | Path],
    settings: EvalSettings,
    attack: AttackSettings,
    model: PromptableSegmenter | None = None,
) -> dict[str, int]:
    """FGSM and PGD at every level on the clean test subset; one Parquet per attack (``outputs``).

    ``perturbed``: the dataset's perturbed shards, read only to select the same images as
    :func:`evaluate_dataset` (:func:`select_image_ids`).

    Rows: category ``adversarial``, ``level`` 1..n, ``ssim`` between the 8-bit clean and adversarial RGB
    images, ``in_band`` True (the budget is exact by construction). ``model``: an already built model
    (tests, benchmarks) instead of loading ``run``'s checkpoints.
    """
    if set(outputs) != set(ATTACKS):
        raise DataError(f"outputs {sorted(outputs)} must be exactly {list(ATTACKS)}")
    model, device = _prepare(run, settings, model)
    ids = select_image_ids(test_shard, perturbed, settings.max_images)
    if settings.attack_max_images is not None:
        ids = ids[: settings.attack_max_images]
    clean = load_test_samples(test_shard, dataset, ids, settings.jitter)
    counts = {}
    for name in ATTACKS:
        rows: list[dict[str, Any]] = []
        for level in tqdm(attack.levels, desc=f"{dataset} {name}", unit="level", leave=False):
            for batch in _batches(clean, settings.batch_size):
                ranges = [s.value_range for s in batch]
                x = images_to_batch([s.image for s in batch], value_ranges=ranges).to(device)
                gt = torch.from_numpy(np.stack([s.mask for s in batch])[:, None]).to(device)
                boxes = _boxes(batch).to(device)
                keys = [(dataset, s.image_id) for s in batch]
                x_adv = run_attack(
                    model, name, level, attack, x, boxes, gt, keys, settings.seed, value_ranges=ranges
                )
                with torch.no_grad():
                    preds = (model(x_adv, boxes)[:, 0] > 0).cpu().numpy()
                adv_u8 = np.round(x_adv.permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)
                clean_u8 = np.round(x.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).cpu().numpy() * 255)
                for i, s in enumerate(batch):
                    meta = {
                        **s.meta,
                        "perturbation": name,
                        "category": "adversarial",
                        "level": level,
                        "ssim": _ssim_u8(clean_u8[i].astype(np.uint8), adv_u8[i]),
                        "in_band": True,
                    }
                    scores = segmentation_scores(preds[i], s.mask, settings.nsd_tolerance)
                    rows.append(
                        _row(
                            run,
                            dataset,
                            getattr(model, "checkpoint_hash", ""),
                            Sample(s.image_id, s.image, s.mask, s.box, meta),
                            scores,
                        )
                    )
        frame = _frame(rows).sort_values(["image_id", "level"], kind="stable").reset_index(drop=True)
        write_parquet_atomic(outputs[name], frame)
        counts[name] = len(frame)
    return counts


# ----------------------------------------------------------------------------------------------------
# Settings from the workflow's params


def eval_settings(params: Mapping[str, Any]) -> EvalSettings:
    """:class:`EvalSettings` from a rule's ``params.settings`` (``rules/segment.smk``: ``seg_params``)."""
    return EvalSettings(
        batch_size=int(params["batch_size"]),
        max_images=params["max_images"],
        attack_max_images=params.get("attack_max_images"),
        jitter=BoxJitter(float(params["box_jitter"]), int(params["seed"])),
        cache_dir=params["cache_dir"],
        device=str(params["device"]),
        threads=params["threads"],
        seed=int(params["seed"]),
        nsd_tolerance=float(params["nsd_tolerance"]),
    )


def attack_settings(params: Mapping[str, Any]) -> AttackSettings:
    """:class:`AttackSettings` from the ``segmentation.attacks`` config mapping."""
    return AttackSettings(
        epsilons=tuple(float(e) for e in params["epsilons"]),
        pgd_steps=tuple(int(s) for s in params["pgd_steps"]),
        pgd_step_factor=float(params["pgd_step_factor"]),
        random_start=bool(params["random_start"]),
        quantize_bits=int(params["quantize_bits"]),
    )


def run_evaluation_job(
    model: str,
    strategy: str,
    dataset: str,
    settings: Mapping[str, Any],
    test_shard: str,
    finetuned: str | None,
    perturbed: Mapping[str, str],
    outputs: Mapping[str, str],
    attack: Mapping[str, Any] | None = None,
    train_seed: int = 0,
) -> dict[str, int]:
    """One workflow job: clean + perturbed metrics (``attack`` None) or FGSM + PGD (``attack`` settings)."""
    run = RunIdentity(model, strategy, settings["checkpoint"], finetuned, int(train_seed))
    cfg = eval_settings(settings)
    if attack is None:
        return evaluate_dataset(run, dataset, test_shard, perturbed, outputs, cfg)
    return evaluate_attacks(
        run, dataset, test_shard, list(perturbed.values()), outputs, cfg, attack_settings(attack)
    )


def run_strategy_job(
    model: str,
    strategy: str,
    layout: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    attack: Mapping[str, Any],
    tests: Sequence[str],
    shards: Sequence[str],
    finetuned: Sequence[str],
    outputs: Sequence[str],
    train_seed: int = 0,
) -> dict[str, dict[str, int]]:
    """One workflow job evaluating every dataset of ``layout`` with one (model, strategy, training seed).

    ``layout``: per dataset ``{"dataset", "perturbations": [...], "attacks": bool}`` in order; the flat path
    lists follow it: ``tests`` one per dataset, ``shards`` the perturbations of each dataset in turn,
    ``finetuned`` one per dataset (empty for ``zero_shot``), ``outputs`` per dataset ``clean``, each
    perturbation, then ``fgsm`` and ``pgd`` when ``attacks``. Each dataset's model is loaded once and
    serves both the clean/perturbed evaluation and the attacks.
    """
    if len(tests) != len(layout) or (finetuned and len(finetuned) != len(layout)):
        raise DataError(f"{len(layout)} datasets need as many test shards / fine-tuned checkpoints")
    if strategy != "zero_shot" and not finetuned:
        raise DataError(f"strategy '{strategy}' needs one fine-tuned checkpoint per dataset")
    cfg = eval_settings(settings)
    attack_cfg = attack_settings(attack)
    shard_iter, out_iter = iter(shards), iter(outputs)
    counts: dict[str, dict[str, int]] = {}
    base: PromptableSegmenter | None = None
    for i, item in enumerate(layout):
        dataset, names = item["dataset"], list(item["perturbations"])
        perturbed = {n: next(shard_iter) for n in names}
        outs = {n: next(out_iter) for n in ["clean", *names]}
        attack_outs = {n: next(out_iter) for n in ATTACKS} if item["attacks"] else {}
        run = RunIdentity(
            model, strategy, settings["checkpoint"], finetuned[i] if finetuned else None, int(train_seed)
        )
        if run.finetuned is None:
            base = base if base is not None else _prepare(run, cfg, None)[0]
            net = base
        else:
            net = _prepare(run, cfg, None)[0]
        counts[dataset] = evaluate_dataset(run, dataset, tests[i], perturbed, outs, cfg, model=net)
        if attack_outs:
            counts[dataset].update(
                evaluate_attacks(
                    run, dataset, tests[i], list(perturbed.values()), attack_outs, cfg, attack_cfg, model=net
                )
            )
    if next(shard_iter, None) is not None or next(out_iter, None) is not None:
        raise DataError("more shards or outputs than the layout describes")
    return counts
