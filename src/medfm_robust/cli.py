"""The ``medfm-robust`` command line: one sub-command family per library stage."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator

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


@contextlib.contextmanager
def about_file(path: object) -> Iterator[None]:
    """Prefix a :class:`MedFMError` raised inside the block with ``path`` unless its message names it."""
    try:
        yield
    except MedFMError as exc:
        if str(path) in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from exc


def _error(msg: str) -> int:
    print(f"medfm-robust: error: {msg}".replace("\n", " "), file=sys.stderr)
    return 2


def _os_error_message(exc: OSError) -> str:
    """``<file>: <reason>`` of an OS error (the file named, no traceback)."""
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    reason = exc.strerror or str(exc)
    return f"{' -> '.join(names)}: {reason}" if names else reason


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line ``medfm-robust: error: ...`` and exit 2.

    An OS error (unwritable folder, full disk, ...) is reported the same way, naming the file; a closed
    output pipe (``... | head``) ends the command quietly with exit code 141 (128 + SIGPIPE), as for
    other command-line tools; Ctrl-C exits with 130.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        with contextlib.suppress(OSError):  # no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("medfm-robust: interrupted", file=sys.stderr)
        return 130
    except MedFMError as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(_os_error_message(exc))


if __name__ == "__main__":
    sys.exit(main())
