"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medfm_robust.seeding import pin_cpu_kernels

# Before any test imports torch: the same float kernels on every x86-64 CPU, as in the workflow's jobs
# (seeding.CPU_KERNEL_PINS). Unpinned, an AVX-512 machine pretrains a different tiny SAM (measured zero-shot
# Dice 0.887 instead of 0.705 on demo_fundus), and trained-model tests would move with the CPU type.
pin_cpu_kernels()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO
