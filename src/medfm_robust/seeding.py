"""Seeds derived from the identity of a draw, never from call order.

Every random draw in the project comes from :func:`rng_for` (or :func:`seed_for`) over a key such as
``(dataset, image_id, perturbation, level)`` plus the global seed, so outputs are identical whatever the
file order, sharding or number of workers.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np


def seed_for(*parts: object, global_seed: int = 0) -> int:
    """A 63-bit seed from a SHA-256 over ``global_seed`` and the string forms of ``parts``."""
    text = "\x1f".join([str(int(global_seed)), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") >> 1


def rng_for(*parts: object, global_seed: int = 0) -> np.random.Generator:
    """A NumPy ``Generator`` (PCG64) seeded by :func:`seed_for`."""
    return np.random.default_rng(seed_for(*parts, global_seed=global_seed))


def unit_hash(*parts: object) -> float:
    """A number in [0, 1) that depends only on ``parts`` (used for file-order-independent splits)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


CPU_KERNEL_PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own vectorised kernels: the AVX2 build, also on AVX-512 CPUs
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (convolutions, some matmuls) likewise
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: the AVX2 code path
}
"""Environment selecting the same float code paths on every x86-64 CPU with AVX2 (AVX-512 ones included)."""


def pin_cpu_kernels(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Pin PyTorch's, oneDNN's and MKL's CPU kernels to their AVX2 code paths (:data:`CPU_KERNEL_PINS`).

    Must run before ``torch`` is imported (the libraries read these variables once). A variable that is
    already set is left alone, so a user can choose otherwise. Without the pins, an AVX-512 machine takes
    other kernels whose float rounding differs, and a trained model (hence every downstream number) moves
    with the CPU type. Returns the pins that are in force. Thread counts are pinned by each job's
    ``threads``.
    """
    env = os.environ if environ is None else environ
    for key, value in CPU_KERNEL_PINS.items():
        env.setdefault(key, value)
    return {k: env[k] for k in CPU_KERNEL_PINS}
