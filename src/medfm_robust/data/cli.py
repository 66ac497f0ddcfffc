"""Sub-commands of the data stage: ``ingest``, ``demo-data``, ``fixture-resources``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medfm_robust import paths


def register(subparsers: Any) -> None:
    """Add this stage's sub-commands to ``subparsers``."""
    p = subparsers.add_parser("ingest", help="ingest datasets of a config into canonical shards")
    p.add_argument("--config", default="config/config.yaml", help="workflow config (default: %(default)s)")
    p.add_argument("--dataset", action="append", help="dataset name (repeatable; default: all)")
    p.add_argument("--out", default=paths.data_dir(), help="output root (default: %(default)s)")
    p.set_defaults(func=_ingest)

    p = subparsers.add_parser("demo-data", help="write demo images and masks as PNG files for viewing")
    p.add_argument("--modality", action="append", help="modality (repeatable; default: all nine)")
    p.add_argument("-n", type=int, default=4, help="images per modality (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=paths.demo_png_dir(), help="output folder (default: %(default)s)")
    p.set_defaults(func=_demo_data)

    p = subparsers.add_parser(
        "fixture-resources", help="write tiny copies of every real dataset layout (for dry runs and tests)"
    )
    p.add_argument("out", help="resources folder to create (not the repository's own resources/)")
    p.add_argument("-n", type=int, default=4, help="images per dataset part (default: %(default)s)")
    p.set_defaults(func=_fixture)


def _ingest(args: argparse.Namespace) -> int:
    from medfm_robust.config import load_config
    from medfm_robust.data.ingest import check_dataset_paths, ingest_dataset
    from medfm_robust.errors import ConfigError

    cfg = load_config(args.config)
    check_dataset_paths(cfg)
    names = args.dataset or sorted(cfg["datasets"])
    for name in names:
        if name not in cfg["datasets"]:
            raise ConfigError(f"{args.config}: no dataset '{name}' under 'datasets'")
        report = ingest_dataset(
            name, cfg["datasets"][name], cfg["data"], Path(args.out) / name, seed=cfg["seed"]
        )
        empty, skipped = report["n_excluded_empty_mask"], report["n_skipped"]
        print(f"{name}: {report['counts']} (empty masks {empty}, skipped {skipped})")
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    import numpy as np

    from medfm_robust.data.demo import synthetic_sample
    from medfm_robust.data.synth import GENERATORS
    from medfm_robust.io import write_image

    for modality in args.modality or list(GENERATORS):
        for i in range(args.n):
            image, mask = synthetic_sample(f"demo_{modality}", modality, i, args.seed)
            write_image(Path(args.out) / modality / f"{modality}_{i:04d}.png", image)
            write_image(
                Path(args.out) / modality / f"{modality}_{i:04d}_mask.png", mask.astype(np.uint8) * 255
            )
    print(f"wrote demo images under {args.out}")
    return 0


def _fixture(args: argparse.Namespace) -> int:
    from medfm_robust.data.fixtures import build_fixture_resources

    print(build_fixture_resources(args.out, args.n))
    return 0
