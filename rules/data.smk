# Data stage: every configured dataset -> canonical shards results/data/{dataset}/{split}.parquet
# (+ ingest_report.json). One job per dataset; demo datasets are generated inside that job.
# Real datasets' folders are inputs (demo datasets have none); params carry exactly the settings that
# one dataset's shards depend on, plus `sources`, the listing manifest of the folder (any file added,
# removed or edited inside re-runs the job: rules/common.smk).


rule data_ingest:
    input:
        lambda wildcards: config["datasets"][wildcards.dataset].get("path") or [],
    output:
        train="results/data/{dataset}/train.parquet",
        val="results/data/{dataset}/val.parquet",
        test="results/data/{dataset}/test.parquet",
        report="results/data/{dataset}/ingest_report.json",
    log:
        "logs/data_ingest/{dataset}.log",
    params:
        spec=lambda wildcards: config["datasets"][wildcards.dataset],
        data={key: config["data"][key] for key in ("image_size", "splits", "on_error")},
        seed=SEED,
        sources=lambda wildcards: source_params(config["datasets"][wildcards.dataset].get("path")),
    threads: lambda wildcards: 4 if config["datasets"][wildcards.dataset].get("path") else 1  # file decoding
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/data_ingest.py"


# Final targets of the data stage: every dataset's shards and ingestion report.
STAGE_TARGETS.append(
    lambda: expand(
        "results/data/{dataset}/{name}",
        dataset=DATASETS,
        name=["train.parquet", "val.parquet", "test.parquet", "ingest_report.json"],
    )
)
