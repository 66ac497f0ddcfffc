"""The ``medfm-robust`` command line: one sub-command family per library stage."""

from __future__ import annotations

import argparse
import importlib
import sys

from medfm_robust import __version__
from medfm_robust.errors import MedFMError

# Each module defines ``register(subparsers)`` adding its sub-commands; a sub-command parser sets
# ``func`` (called with the parsed namespace, returning an exit code).
COMMAND_MODULES = (
    "medfm_robust.data.cli",
    "medfm_robust.perturb.cli",
    "medfm_robust.seg.cli",
    "medfm_robust.vlm.cli",
    "medfm_robust.report.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every stage's sub-commands."""
    parser = argparse.ArgumentParser(
        prog="medfm-robust",
        description="SSIM-calibrated robustness benchmarking of medical foundation models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line ``medfm-robust: error: ...`` and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except MedFMError as exc:
        msg = str(exc).replace("\n", " ")
        print(f"medfm-robust: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
