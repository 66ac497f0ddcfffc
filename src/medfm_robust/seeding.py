"""Seeds derived from the identity of a draw, never from call order.

Every random draw in the project comes from :func:`rng_for` (or :func:`seed_for`) over a key such as
``(dataset, image_id, perturbation, level)`` plus the global seed, so outputs are identical whatever the
file order, sharding or number of workers.
"""

from __future__ import annotations

import hashlib

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
