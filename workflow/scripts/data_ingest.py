"""Snakemake adapter for rule ``data_ingest``: one dataset -> canonical shards + ingestion report."""

from pathlib import Path
from typing import Any

from medfm_robust.data.ingest import ingest_dataset
from medfm_robust.logs import run_snakemake_script


def main(smk: Any) -> None:
    """Ingest ``wildcards.dataset`` with the rule's params into the folder of its outputs."""
    ingest_dataset(
        smk.wildcards.dataset,
        dict(smk.params.spec),
        dict(smk.params.data),
        Path(smk.output.report).parent,
        seed=int(smk.params.seed),
        workers=int(smk.threads),
    )


run_snakemake_script(snakemake, main)
