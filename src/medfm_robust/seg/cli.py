"""Sub-commands of the segmentation stage: ``seg-models``, ``seg-predict``, ``seg-eval``, ``finetune``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from medfm_robust.errors import ConfigError
from medfm_robust.perturb.cli import add_max_pixels


def register(subparsers: Any) -> None:
    """Add this stage's sub-commands to ``subparsers``."""
    _add_models(subparsers)
    _add_predict(subparsers)
    _add_eval(subparsers)
    _add_finetune(subparsers)


def _add_models(subparsers: Any) -> None:
    p = subparsers.add_parser("seg-models", help="list the segmentation models and their preprocessing")
    p.add_argument("--json", action="store_true", help="print the registry as JSON")
    p.set_defaults(func=_models)


def _add_predict(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "seg-predict", help="segment one image with a box prompt and write the mask PNG"
    )
    p.add_argument("model", help="registry name (see seg-models)")
    p.add_argument("image", help="input image (8- or 16-bit, gray or RGB)")
    p.add_argument("output", help="output mask PNG ({0, 255})")
    p.add_argument(
        "--box",
        required=True,
        type=int,
        nargs=4,
        metavar=("X0", "Y0", "X1", "Y1"),
        help="box prompt in pixels, inclusive max",
    )
    p.add_argument("--checkpoint", help="checkpoint file, or 'bundled' for lite_medsam (default: random)")
    p.add_argument(
        "--value-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="stored values meaning black and white (default: 0 255 for 8-bit images; a 16-bit image's own "
        "min and max, as ingestion's `intensity: none` records them)",
    )
    add_max_pixels(p)
    p.set_defaults(func=_predict)


def _add_eval(subparsers: Any) -> None:
    p = subparsers.add_parser("seg-eval", help="evaluate one (model, strategy, dataset) outside the workflow")
    p.add_argument("--model", required=True)
    p.add_argument("--strategy", default="zero_shot")
    p.add_argument("--dataset", required=True)
    p.add_argument("--test", required=True, help="canonical test shard (medfm_robust.paths.data_shard)")
    p.add_argument(
        "--shard", action="append", default=[], metavar="NAME=PATH", help="perturbed shard (repeat)"
    )
    p.add_argument("--out-dir", required=True, help="folder for {clean,<perturbation>,fgsm,pgd}.parquet")
    p.add_argument("--checkpoint", help="base checkpoint ('bundled' for lite_medsam)")
    p.add_argument("--finetuned", help="fine-tuned checkpoint of a trained strategy")
    p.add_argument("--train-seed", type=int, default=0, help="training seed of --finetuned")
    p.add_argument("--max-images", type=int)
    p.add_argument("--batch-size", type=int, help="images per encoder/decoder batch (default: the schema's)")
    p.add_argument("--attacks", action="store_true", help="also run FGSM and PGD (default settings)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_eval)


def _add_finetune(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune one (model, dataset, strategy) outside the workflow; prints peak memory and time",
    )
    p.add_argument("--config", required=True, help="workflow config (e.g. config/paper.yaml)")
    p.add_argument("--model", required=True, help="a model under finetune.models")
    p.add_argument("--dataset", required=True)
    p.add_argument("--strategy", required=True)
    p.add_argument("--out", required=True, help="checkpoint .safetensors (sidecar, log, curve beside)")
    p.add_argument("--train", help="train shard (default: the workflow's canonical train shard)")
    p.add_argument("--val", help="validation shard (default: the workflow's canonical val shard)")
    p.add_argument("--checkpoint", help="base weights instead of the config's ('random': random init)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="instead of finetune.device")
    p.add_argument("--epochs", type=int, help="instead of the config's")
    p.add_argument("--batch-size", type=int, help="effective batch, instead of the config's")
    p.add_argument("--micro-batch-size", type=int, help="images per forward/backward pass")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--max-train-images", type=int)
    p.add_argument("--max-val-images", type=int)
    p.add_argument("--train-seed", type=int, default=0,
                   help="training seed (the workflow's finetune.seeds; 0 = the first, as in the workflow)")
    p.set_defaults(func=_finetune)


def _models(args: argparse.Namespace) -> int:
    from medfm_robust.seg.models import MODEL_SPECS

    rows = [s.to_dict() for s in MODEL_SPECS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:<12} {r['input_size']:>5}  {r['checkpoint_file']:<24} {r['normalisation']}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from medfm_robust.cli import about_file
    from medfm_robust.intensity import apply_policy, check_value_range
    from medfm_robust.io import check_outputs, check_png_name, read_image, write_image
    from medfm_robust.seg.models import build_model, images_to_batch

    check_png_name(args.output)
    check_outputs([args.output], [args.image, *([args.checkpoint] if args.checkpoint else [])])
    model = build_model(args.model, args.checkpoint)
    image = read_image(args.image, max_pixels=args.max_pixels or None)
    if args.value_range is not None:
        value_range = check_value_range(args.value_range, f"--value-range of {args.image}")
    else:
        value_range = apply_policy(image, "none", args.image)[1]
    x0, y0, x1, y1 = args.box
    h, w = image.shape[:2]
    if not (0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h):
        raise ConfigError(f"--box {args.box} is not inside the {w} x {h} image {args.image}")
    with torch.no_grad(), about_file(args.image):
        x = images_to_batch([image], model.device, value_ranges=[value_range])
        logits = model(x, torch.tensor([args.box], dtype=torch.float32))
    write_image(args.output, (logits[0, 0] > 0).cpu().numpy().astype(np.uint8) * 255)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from medfm_robust.io import check_outputs
    from medfm_robust.seg.attacks import AttackSettings
    from medfm_robust.seg.evaluate import RunIdentity, evaluate_attacks, evaluate_dataset

    shards = {}
    for item in args.shard:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--shard expects NAME=PATH, got '{item}'")
        shards[name] = path
    out = Path(args.out_dir)
    names = ["clean", *shards, *(("fgsm", "pgd") if args.attacks else ())]
    checkpoints = [p for p in (args.checkpoint, args.finetuned) if p and p != "bundled"]
    inputs = [args.test, *shards.values(), *checkpoints]
    check_outputs([out / f"{n}.parquet" for n in names], inputs)
    run = RunIdentity(args.model, args.strategy, args.checkpoint, args.finetuned, train_seed=args.train_seed)
    settings = _eval_settings(args)
    counts = evaluate_dataset(
        run, args.dataset, args.test, shards, {n: out / f"{n}.parquet" for n in ["clean", *shards]}, settings
    )
    if args.attacks:
        counts.update(
            evaluate_attacks(
                run,
                args.dataset,
                args.test,
                list(shards.values()),
                {n: out / f"{n}.parquet" for n in ("fgsm", "pgd")},
                settings,
                AttackSettings(),
            )
        )
    print(json.dumps(counts, indent=2))
    return 0


def peak_memory(device: str) -> tuple[str, int]:
    """``("cuda", torch.cuda.max_memory_allocated bytes)`` on a GPU, else ``("rss", peak resident set
    size bytes of this process)`` from ``resource.getrusage`` (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    import torch

    if device.startswith("cuda"):
        return "cuda", int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return "rss", int(rss if sys.platform == "darwin" else rss * 1024)


def _eval_settings(args: argparse.Namespace) -> Any:
    """``EvalSettings`` of ``seg-eval``: ``--batch-size`` (else the schema's default, as ``EvalSettings``
    has it), ``--max-images``, ``--device``."""
    from medfm_robust.seg.evaluate import EvalSettings

    given = {} if args.batch_size is None else {"batch_size": args.batch_size}
    return EvalSettings(max_images=args.max_images, device=args.device, **given)


def _finetune(args: argparse.Namespace) -> int:
    import time

    from medfm_robust.config import load_config
    from medfm_robust.devices import pick_device
    from medfm_robust.paths import RUN_SUFFIXES, data_shard
    from medfm_robust.seg.finetune import finetune_run
    from medfm_robust.seg.finetune_config import base_checkpoint

    config = load_config(args.config)
    settings = _finetune_settings(args, config)
    base = args.checkpoint if args.checkpoint is not None else base_checkpoint(config, args.model)
    out = Path(args.out)
    if out.suffix != RUN_SUFFIXES["checkpoint"]:
        raise ConfigError(f"--out {out}: the checkpoint must be a {RUN_SUFFIXES['checkpoint']} file")
    paths = {kind: out.with_name(out.stem + suffix) for kind, suffix in RUN_SUFFIXES.items()}
    device = pick_device(args.device or config["finetune"]["device"], "finetune.device")
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    result = finetune_run(
        model_name=args.model,
        base_checkpoint=None if base == "random" else base,
        dataset=args.dataset,
        strategy=args.strategy,
        train_shard=args.train or data_shard(args.dataset, "train"),
        val_shard=args.val or data_shard(args.dataset, "val"),
        checkpoint_out=paths["checkpoint"],
        log_csv=paths["history"],
        curve_png=paths["curve"],
        settings=settings,
        global_seed=int(config["seed"]),
        train_seed=args.train_seed,
        device=str(device),
        keep_state=False,
        progress=False,
    )
    summary = _finetune_summary(args, settings, result, str(device), t0, paths["checkpoint"])
    print(json.dumps(summary, indent=2))
    return 0


def _finetune_settings(args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Any]:
    """The run's resolved settings with the command line's training overrides applied."""
    from medfm_robust.seg.finetune_config import run_settings

    settings = run_settings(config["finetune"], args.model, args.strategy)
    overrides = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "micro_batch_size": args.micro_batch_size,
        "activation_checkpointing": args.activation_checkpointing,
        "max_train_images": args.max_train_images,
        "max_val_images": args.max_val_images,
    }
    settings["train"].update({k: v for k, v in overrides.items() if v is not None})
    return settings


def _finetune_summary(args: argparse.Namespace, settings: dict[str, Any], result: Any, device: str, t0: float,
                      checkpoint: Path) -> dict[str, Any]:
    """What ``finetune`` prints: the run, its memory peak and time since ``t0``."""
    import time

    kind, peak = peak_memory(device)
    return {
        "model": args.model,
        "dataset": args.dataset,
        "strategy": args.strategy,
        "device": device,
        "batch_size": settings["train"].get("batch_size"),
        "micro_batch_size": settings["train"].get("micro_batch_size"),
        "activation_checkpointing": settings["train"]["activation_checkpointing"],
        "trainable_params": result.trainable_params,
        "best_epoch": result.best_epoch,
        "val_dice": round(result.best_val_dice, 6),
        "seconds": round(time.perf_counter() - t0, 3),
        "peak_memory": kind,
        "peak_memory_mib": round(peak / 2**20, 1),
        "checkpoint": str(checkpoint),
    }
