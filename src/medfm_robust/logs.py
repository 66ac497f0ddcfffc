"""Logging set-up shared by the command line and the workflow scripts."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medfm_robust.errors import MedFMError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``log_file`` (created with its folder)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)


def run_snakemake_script(snakemake: Any, func: Callable[[Any], None]) -> None:
    """Run ``func(snakemake)`` with logging to the rule's first log file.

    Errors are logged (user errors as one line, others with a traceback) and re-raised so that
    Snakemake marks the job failed and removes its outputs.
    """
    log = snakemake.log[0] if len(snakemake.log) else None
    setup_logging(log)
    logger = logging.getLogger(f"medfm_robust.rule.{snakemake.rule}")
    try:
        func(snakemake)
    except MedFMError as exc:
        logger.error("%s", exc)
        raise
    except Exception:
        logger.exception("rule %s failed", snakemake.rule)
        raise
