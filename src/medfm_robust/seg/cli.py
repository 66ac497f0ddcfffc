"""Sub-commands of the segmentation stage: ``seg-models``, ``seg-predict``, ``seg-eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from medfm_robust.errors import ConfigError
from medfm_robust.perturb.cli import add_max_pixels


def register(subparsers: Any) -> None:
    """Add this stage's sub-commands to ``subparsers``."""
    p = subparsers.add_parser("seg-models", help="list the segmentation models and their preprocessing")
    p.add_argument("--json", action="store_true", help="print the registry as JSON")
    p.set_defaults(func=_models)

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
    add_max_pixels(p)
    p.set_defaults(func=_predict)

    p = subparsers.add_parser("seg-eval", help="evaluate one (model, strategy, dataset) outside the workflow")
    p.add_argument("--model", required=True)
    p.add_argument("--strategy", default="zero_shot")
    p.add_argument("--dataset", required=True)
    p.add_argument("--test", required=True, help="canonical test shard (results/data/{dataset}/test.parquet)")
    p.add_argument(
        "--shard", action="append", default=[], metavar="NAME=PATH", help="perturbed shard (repeat)"
    )
    p.add_argument("--out-dir", required=True, help="folder for {clean,<perturbation>,fgsm,pgd}.parquet")
    p.add_argument("--checkpoint", help="base checkpoint ('bundled' for lite_medsam)")
    p.add_argument("--finetuned", help="fine-tuned checkpoint of a trained strategy")
    p.add_argument("--max-images", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--attacks", action="store_true", help="also run FGSM and PGD (default settings)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_eval)


def _models(args: argparse.Namespace) -> int:
    from medfm_robust.seg.models import MODEL_SPECS

    rows = [
        {
            "name": s.name,
            "input_size": s.input_size,
            "normalisation": s.normalisation,
            "checkpoint_file": s.checkpoint_file,
            "description": s.description,
        }
        for s in MODEL_SPECS.values()
    ]
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
    from medfm_robust.io import check_outputs, check_png_name, read_image, write_image
    from medfm_robust.seg.models import build_model, images_to_batch

    check_png_name(args.output)
    check_outputs([args.output], [args.image, *([args.checkpoint] if args.checkpoint else [])])
    model = build_model(args.model, args.checkpoint)
    image = read_image(args.image, max_pixels=args.max_pixels or None)
    x0, y0, x1, y1 = args.box
    h, w = image.shape[:2]
    if not (0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h):
        raise ConfigError(f"--box {args.box} is not inside the {w} x {h} image {args.image}")
    with torch.no_grad(), about_file(args.image):
        logits = model(images_to_batch([image], model.device), torch.tensor([args.box], dtype=torch.float32))
    write_image(args.output, (logits[0, 0] > 0).cpu().numpy().astype(np.uint8) * 255)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from medfm_robust.io import check_outputs
    from medfm_robust.seg.attacks import AttackSettings
    from medfm_robust.seg.evaluate import EvalSettings, RunIdentity, evaluate_attacks, evaluate_dataset

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
    run = RunIdentity(args.model, args.strategy, args.checkpoint, args.finetuned)
    settings = EvalSettings(batch_size=args.batch_size, max_images=args.max_images, device=args.device)
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
