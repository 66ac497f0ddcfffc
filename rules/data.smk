# Data stage: every configured dataset -> canonical shards paths.data_shard(dataset, split)
# (+ paths.ingest_report). One job per dataset; demo datasets are generated inside that job.
# Real datasets' folders are inputs (demo datasets have none); params carry exactly the settings that
# one dataset's shards depend on, plus `sources`, the listing manifest of the folder (any file added,
# removed or edited inside re-runs the job: rules/common.smk).


rule data_ingest:
    input:
        lambda wildcards: config["datasets"][wildcards.dataset].get("path") or [],
    output:
        train=paths.data_shard(split="train"),
        val=paths.data_shard(split="val"),
        test=paths.data_shard(split="test"),
        report=paths.ingest_report(),
    log:
        "logs/data_ingest/{dataset}.log",
    conda:
        "../envs/data.yaml"
    threads: lambda wildcards: 4 if config["datasets"][wildcards.dataset].get("path") else 1  # file decoding
    params:
        spec=lambda wildcards: config["datasets"][wildcards.dataset],
        data={key: config["data"][key] for key in ("image_size", "splits", "on_error", "max_pixels")},
        seed=SEED,
        sources=lambda wildcards: source_params(config["datasets"][wildcards.dataset].get("path")),
    script:
        "../workflow/scripts/data_ingest.py"


# Final targets of the data stage: every dataset's shards and ingestion report.
STAGE_TARGETS.append(
    lambda: [
        path
        for d in DATASETS
        for path in (*(paths.data_shard(d, s) for s in paths.SPLITS), paths.ingest_report(d))
    ]
)
