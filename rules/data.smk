# Data stage: every configured dataset -> canonical shards results/data/{dataset}/{split}.parquet
# (+ ingest_report.json). One job per dataset; demo datasets are generated inside that job.


def get_dataset_folder(wildcards):
    """The real dataset's folder (an input, so the DAG shows it); demo datasets have none."""
    path = config["datasets"][wildcards.dataset].get("path")
    return [path] if path else []


def get_data_settings(wildcards):
    """The ingestion settings one dataset's shards depend on."""
    return {key: config["data"][key] for key in ("image_size", "splits", "on_error")}


def data_final_targets():
    """Every dataset's shards and ingestion report."""
    return expand(
        "results/data/{dataset}/{name}",
        dataset=DATASETS,
        name=["train.parquet", "val.parquet", "test.parquet", "ingest_report.json"],
    )


rule data_ingest:
    input:
        get_dataset_folder,
    output:
        train="results/data/{dataset}/train.parquet",
        val="results/data/{dataset}/val.parquet",
        test="results/data/{dataset}/test.parquet",
        report="results/data/{dataset}/ingest_report.json",
    log:
        "logs/data_ingest/{dataset}.log",
    params:
        spec=lambda wildcards: config["datasets"][wildcards.dataset],
        data=get_data_settings,
        seed=SEED,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow/scripts/data_ingest.py"


STAGE_TARGETS.append(data_final_targets)
