"""Data stage: dataset adapters (real layouts and embedded demo data) -> canonical Parquet shards.

Public entry points: :func:`ingest_dataset` (one dataset -> ``{split}.parquet`` + ``ingest_report.json``),
:func:`check_dataset_paths`, :func:`read_shard` / :func:`decode_row` (reading shards back),
:func:`showcase_images`, :func:`describe_mask`, :data:`ORGAN_BY_MODALITY` and
:func:`build_fixture_resources`.
"""

from medfm_robust.data import adapters  # noqa: F401  (registers the publishers' readers)
from medfm_robust.data.demo import (
    FINDING_BY_MODALITY,
    ORGAN_BY_MODALITY,
    describe_mask,
    showcase_images,
    synthetic_sample,
)
from medfm_robust.data.fixtures import build_fixture_resources
from medfm_robust.data.ingest import check_dataset_paths, ingest_dataset
from medfm_robust.data.registry import ADAPTERS, get_adapter
from medfm_robust.data.shards import SHARD_SCHEMA, SPLITS, assign_splits, decode_row, read_shard, split_sizes

__all__ = [
    "ADAPTERS",
    "FINDING_BY_MODALITY",
    "ORGAN_BY_MODALITY",
    "SHARD_SCHEMA",
    "SPLITS",
    "assign_splits",
    "build_fixture_resources",
    "check_dataset_paths",
    "decode_row",
    "describe_mask",
    "get_adapter",
    "ingest_dataset",
    "read_shard",
    "showcase_images",
    "split_sizes",
    "synthetic_sample",
]
