"""Sub-commands of the perturb stage: ``perturbations``, ``perturb``, ``ssim``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from medfm_robust.errors import ConfigError, DataError


def register(subparsers: Any) -> None:
    """Add this stage's sub-commands to ``subparsers``."""
    p = subparsers.add_parser("perturbations", help="list the perturbation registry")
    p.add_argument("--json", action="store_true", help="print the registry as JSON")
    p.set_defaults(func=_list)

    p = subparsers.add_parser("perturb", help="calibrate one perturbation on one image and write the PNG")
    p.add_argument("input", help="input image (PNG, JPEG, TIFF; 8- or 16-bit, gray or RGB)")
    p.add_argument("output", help="output PNG (same size, dtype and channels as the input)")
    p.add_argument("--type", required=True, dest="type_", metavar="NAME", help="perturbation type")
    p.add_argument("--level", required=True, type=int, help="severity level 1..5")
    p.add_argument("--seed", type=int, default=0, help="seed of the random stream (default 0)")
    p.add_argument("--mask", help="mask image to move with label-moving types")
    p.add_argument("--mask-out", dest="mask_out", help="where to write the (moved) mask PNG")
    add_max_pixels(p)
    p.set_defaults(func=_perturb)

    p = subparsers.add_parser("ssim", help="SSIM of two images (the project's definition)")
    p.add_argument("a")
    p.add_argument("b")
    add_max_pixels(p)
    p.set_defaults(func=_ssim)


def add_max_pixels(parser: argparse.ArgumentParser) -> None:
    """Add ``--max-pixels`` (the input size guard of :func:`medfm_robust.io.read_image`) to ``parser``."""
    from medfm_robust.io import DEFAULT_MAX_PIXELS

    parser.add_argument(
        "--max-pixels",
        dest="max_pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="refuse inputs of more than N pixels (width x height; default %(default)s; 0: no limit)",
    )


def _list(args: argparse.Namespace) -> int:
    from medfm_robust.perturb import REGISTRY

    if args.json:
        print(json.dumps([s.to_dict() for s in REGISTRY.values()], indent=2))
        return 0
    print(
        f"{'name':<20} {'category':<8} {'modalities':<28} {'parameter (range, direction)':<44} moves labels"
    )
    for s in REGISTRY.values():
        lo, hi = s.param.range
        par = f"{s.param.name} [{lo:g}, {hi:g}] {s.param.direction}{' int' if s.param.integer else ''}"
        mods = "all" if s.category == "base" else ",".join(s.modalities)
        print(f"{s.name:<20} {s.category:<8} {mods:<28} {par:<44} {'yes' if s.moves_labels else 'no'}")
    return 0


def _perturb(args: argparse.Namespace) -> int:
    from medfm_robust.cli import about_file
    from medfm_robust.io import check_outputs, check_png_name, read_image, write_images
    from medfm_robust.perturb import calibrate
    from medfm_robust.perturb.registry import get_spec

    get_spec(args.type_)
    if not 1 <= args.level <= 5:
        raise ConfigError(f"--level must be in 1..5, got {args.level}")
    if args.mask_out and not args.mask:
        raise ConfigError("--mask-out needs --mask")
    outputs = [args.output, *([args.mask_out] if args.mask_out else [])]
    for out in outputs:
        check_png_name(out)
    check_outputs(outputs, [args.input, *([args.mask] if args.mask else [])])
    limit = args.max_pixels or None
    image = read_image(args.input, max_pixels=limit)
    if image.ndim == 3 and image.dtype.itemsize == 2:
        raise DataError(f"{args.input}: 16-bit colour images are not supported")
    mask = None
    if args.mask:
        mask = read_image(args.mask, max_pixels=limit)
        if mask.ndim == 3:
            mask = mask[..., 0]
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{args.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but {args.input} is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
    with about_file(args.input):
        res = calibrate(image, args.type_, args.level, seed=args.seed, mask=mask)
    out = res.summary()
    out["output"] = str(Path(args.output))
    items = [(args.output, res.image)]
    if args.mask_out and res.mask is not None:
        items.append((args.mask_out, res.mask))
        out["mask_out"] = str(Path(args.mask_out))
    write_images(items)  # both files or neither
    print(json.dumps(out))
    return 0


def _ssim(args: argparse.Namespace) -> int:
    from medfm_robust.cli import about_file
    from medfm_robust.io import read_image
    from medfm_robust.perturb.ssim import ssim

    limit = args.max_pixels or None
    a, b = read_image(args.a, max_pixels=limit), read_image(args.b, max_pixels=limit)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise DataError(f"{args.a} is {a.shape} {a.dtype} but {args.b} is {b.shape} {b.dtype}")
    with about_file(args.a):
        value = ssim(a, b)
    print(f"{value:.6f}")
    return 0
