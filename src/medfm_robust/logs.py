"""Logging set-up shared by the command line and the workflow scripts, and secret redaction.

Every handler set up here formats through :class:`RedactingFormatter`, and uncaught exceptions are
printed through :func:`redact` too: API keys (registered values and every environment variable whose
name says key / token / secret / password) and any ``Authorization`` / ``Bearer`` / ``api-key`` value
become ``[REDACTED]`` in log files, on stderr and in tracebacks.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medfm_robust.errors import MedFMError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[REDACTED]"
_SECRETS: set[str] = set()
_SECRET_ENV = re.compile(r"(?i)(api[_-]?key|token|secret|passw(or)?d)")
_MIN_SECRET_LEN = 6  # shorter values would redact ordinary words
# `Authorization: <anything>`, `Bearer <token>`, `api-key: <value>` (quoted or not, in headers, JSON, reprs)
_HEADER_VALUES = re.compile(
    r"(?i)((?:proxy-)?authorization|x-api-key|api[-_]key|x-goog-api-key)(['\"]?\s*[:=]\s*['\"]?)"
    r"(?:bearer\s+|basic\s+)?[^\s'\",;}\]]+"
)
# a bearer token (it has a digit and 8+ characters; "bearer" alone is an ordinary word)
_BEARER = re.compile(r"(?i)\b(bearer)\s+(?=[A-Za-z._~+/=-]*\d)[A-Za-z0-9._~+/=-]{8,}")


def register_secret(value: str | None) -> None:
    """Redact ``value`` from every message from now on (API clients register their keys)."""
    if value and len(value) >= _MIN_SECRET_LEN:
        _SECRETS.add(value)


def _secret_values() -> list[str]:
    env = [v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= _MIN_SECRET_LEN]
    return sorted({*_SECRETS, *env}, key=len, reverse=True)  # longest first: a key containing another


def redact(text: object) -> str:
    """``str(text)`` with secret values and Authorization / Bearer / api-key values replaced."""
    out = str(text)
    for value in _secret_values():
        if value in out:
            out = out.replace(value, REDACTED)
    out = _HEADER_VALUES.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", out)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", out)


class RedactingFormatter(logging.Formatter):
    """A formatter whose every line (message, arguments and traceback) goes through :func:`redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _redacting_excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``log_file`` (created with its folder)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    for handler in handlers:
        handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=handlers, force=True)
    sys.excepthook = _redacting_excepthook  # an uncaught exception's traceback on stderr, redacted too


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
