"""Sub-commands of the vlm stage: ``vlm-samples``, ``vlm-parse``, ``vlm-api-check``, ``vlm-convert``."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from medfm_robust.vlm.tasks import TASKS


def register(subparsers: Any) -> None:
    """Add this stage's sub-commands to ``subparsers``."""
    p = subparsers.add_parser("vlm-samples", help="build one VLM sample table (dataset x task) from a config")
    p.add_argument("--config", default="config/config.yaml", help="workflow config (default: %(default)s)")
    p.add_argument("--dataset", required=True, help="name under vlm.datasets")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--shards", nargs="*", default=[], help="canonical shards (demo adapter)")
    p.add_argument("--out", required=True, help="output Parquet path")
    p.set_defaults(func=_samples)

    p = subparsers.add_parser("vlm-parse", help="parse one raw model answer (debugging the parsers)")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--options", nargs="*", default=[], help="VQA options in letter order")
    p.add_argument("--size", nargs=2, type=int, metavar=("W", "H"), default=(256, 256), help="image size")
    p.add_argument("--convention", default="pixel", help="box convention (pixel, norm1, norm1000, yxyx1000)")
    p.add_argument("text", help="the raw answer")
    p.set_defaults(func=_parse)

    p = subparsers.add_parser("vlm-api-check", help="show API endpoints, key variables and cache size")
    p.add_argument("--config", default="config/config.yaml", help="workflow config (default: %(default)s)")
    p.set_defaults(func=_api_check)

    p = subparsers.add_parser("vlm-convert", help="convert an official VLM release to a transformers folder")
    p.add_argument("family", choices=["llava-med"], help="release format (llava-med: LLaVA-Med v1.5)")
    p.add_argument("src", help="the official release folder (config.json, shards, tokenizer.model)")
    p.add_argument("dst", help="output folder (must not exist)")
    p.add_argument("--vision-tower", default=None,
                   help="local copy of the CLIP folder named by mm_vision_tower (config, preprocessor)")
    p.set_defaults(func=_convert)


def _samples(args: argparse.Namespace) -> int:
    from medfm_robust.config import load_config
    from medfm_robust.errors import ConfigError
    from medfm_robust.logs import setup_logging
    from medfm_robust.vlm.datasets import build_and_write

    setup_logging()
    cfg = load_config(args.config)
    vlm = cfg["vlm"]
    if args.dataset not in vlm["datasets"]:
        raise ConfigError(f"config key 'vlm.datasets.{args.dataset}': not defined in {args.config}")
    build_and_write(args.out, args.dataset, vlm["datasets"][args.dataset], args.task,
                    sampling=vlm["sampling"], seed=cfg["seed"], shards=args.shards,
                    resources_dir=cfg["resources_dir"])
    return 0


def _parse(args: argparse.Namespace) -> int:
    from medfm_robust.vlm.parsing import parse_answer

    sample = {"options": args.options, "width": args.size[0], "height": args.size[1]}
    p = parse_answer(args.task, args.text, sample, args.convention)
    print(json.dumps({"ok": p.ok, "parsed": p.text, "method": p.method}))
    return 0 if p.ok else 1


def _convert(args: argparse.Namespace) -> int:
    from medfm_robust.logs import setup_logging
    from medfm_robust.vlm.convert_llava import convert_llava_med

    setup_logging()
    record = convert_llava_med(args.src, args.dst, vision_tower=args.vision_tower)
    print(json.dumps(record))
    return 0


def _api_check(args: argparse.Namespace) -> int:
    from medfm_robust.config import load_config
    from medfm_robust.vlm.api import Endpoint

    cfg = load_config(args.config)
    api = cfg["vlm"]["api"]
    root = api["cache_dir"]
    n_cached = sum(len(files) for _, _, files in os.walk(root)) if os.path.isdir(root) else 0
    for name in sorted(api["endpoints"]):
        ep = Endpoint.from_config(name, api)
        state = "set" if os.environ.get(ep.api_key_env) else "NOT SET"
        print(f"{name}: {ep.model} at {ep.base_url}; key {ep.api_key_env} {state}; boxes {ep.box_convention}")
    print(f"cache {root}: {n_cached} answers")
    return 0
