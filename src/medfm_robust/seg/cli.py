"""Sub-commands of the seg stage (to be filled by its owner)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add this stage's sub-commands to ``subparsers``."""
    del subparsers
    _ = argparse
