"""Deterministic modality-stratified sampling of sample tables, per split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medfm_robust.config import with_defaults
from medfm_robust.seeding import seed_for


def stratified_sample(df: pd.DataFrame, n: int | None, *, key: Sequence[object], seed: int,
                      by: str = "modality") -> pd.DataFrame:
    """Deterministic sample of ``n`` rows stratified by ``by`` (proportional, largest remainder).

    Each row's rank is ``seed_for(*key, sample_id, global_seed=seed)``, so the draw depends only on the
    rows' identities (not on file order) and a smaller ``n`` gives a subset of a larger one's stratum
    picks. ``n=None`` or ``n >= len(df)`` keeps everything. Returns rows sorted by ``sample_id``.
    """
    if n is None or n >= len(df):
        return df.sort_values("sample_id", kind="stable").reset_index(drop=True)
    ranks = np.array([seed_for(*key, sid, global_seed=seed) for sid in df["sample_id"]], dtype=np.uint64)
    df = df.assign(_rank=ranks).sort_values(["_rank", "sample_id"], kind="stable")
    sizes = df.groupby(by, sort=True).size()
    quota = sizes / sizes.sum() * n
    alloc = np.floor(quota).astype(int)
    if n >= len(sizes):
        alloc = alloc.clip(lower=1)
    rest = n - int(alloc.sum())
    if rest > 0:
        order = sorted(sizes.index, key=lambda s: (-(quota[s] - np.floor(quota[s])), s))
        for s in order[:rest]:
            alloc[s] += 1
    while int(alloc.sum()) > n:  # clip(lower=1) can overshoot: take back from the largest strata
        alloc[alloc.idxmax()] -= 1
    parts = [g.head(int(min(alloc[s], len(g)))) for s, g in df.groupby(by, sort=True)]
    out = pd.concat(parts).drop(columns="_rank")
    return out.sort_values("sample_id", kind="stable").reset_index(drop=True)


def sample_splits(df: pd.DataFrame, sampling: Mapping[str, Any], *, dataset: str, task: str,
                  seed: int) -> pd.DataFrame:
    """Apply ``sampling`` (``n_test``, ``n_train``, ``n_val``, ``stratify_by``) to each split."""
    sampling = with_defaults("vlm.sampling", sampling)
    by = sampling["stratify_by"]
    parts = []
    for split, g in df.groupby("split", sort=True):
        n = sampling.get(f"n_{split}")
        parts.append(stratified_sample(g, n, key=("vlm_sample", dataset, task, split), seed=seed, by=by))
    return pd.concat(parts).sort_values("sample_id", kind="stable").reset_index(drop=True)
