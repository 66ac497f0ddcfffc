"""Every output path of the workflow, in one place (relative to the working directory).

One function per artifact. Its arguments default to the Snakemake wildcard of the same name, so calling it
without them gives the rule's pattern (``seg_metrics()`` ->
``results/metrics/segmentation/{model}/{strategy}/seed{seed}/{dataset}.parquet``) and with them a
concrete path. The rule files, the library and the report take their paths from here; nothing else spells
``results/``. Logs and benchmarks mirror the output wildcards (:func:`log`, :func:`benchmark`).
"""

from __future__ import annotations

RESULTS = "results"
SPLITS = ("train", "val", "test")
#: suffixes of one fine-tuning run's files, appended to :func:`checkpoint_stem`
RUN_SUFFIXES = {
    "checkpoint": ".safetensors",
    "sidecar": ".json",
    "history": "_history.csv",
    "curve": "_curve.png",
}
TABLE_EXTS = ("csv", "md", "tex")
FIGURE_EXTS = ("png", "pdf")

# --- data stage ---------------------------------------------------------------------------------------


def data_dir() -> str:
    """Root of the canonical shards (``results/data``)."""
    return f"{RESULTS}/data"


def data_shard(dataset: str = "{dataset}", split: str = "{split}") -> str:
    """Canonical shard of one dataset split."""
    return f"{data_dir()}/{dataset}/{split}.parquet"


def ingest_report(dataset: str = "{dataset}") -> str:
    """Ingestion report of one dataset."""
    return f"{data_dir()}/{dataset}/ingest_report.json"


def demo_png_dir() -> str:
    """Default folder of ``medfm-robust demo-data`` (demo images as PNG files, outside the workflow)."""
    return f"{RESULTS}/demo_png"


# --- perturbation stage -------------------------------------------------------------------------------


def perturbed_shard(dataset: str = "{dataset}", perturbation: str = "{perturbation}") -> str:
    """SSIM-calibrated perturbed shard of one (dataset, perturbation type)."""
    return f"{RESULTS}/perturbed/{dataset}/{perturbation}.parquet"


def calibration_report(dataset: str = "{dataset}", ext: str = "csv") -> str:
    """Calibration report of one dataset (``ext``: ``csv`` or ``json``)."""
    return f"{RESULTS}/perturbed/{dataset}/calibration_report.{ext}"


def contact_sheet(modality: str = "{modality}") -> str:
    """Contact sheet of one modality's perturbation types."""
    return f"{RESULTS}/figures/contact_sheets/{modality}.png"


# --- fine-tuning stage --------------------------------------------------------------------------------


def checkpoint_stem(
    model: str = "{model}",
    dataset: str = "{dataset}",
    strategy: str = "{strategy}",
    seed: int | str = "{seed}",
) -> str:
    """Stem of one fine-tuning run's files (add a :data:`RUN_SUFFIXES` value)."""
    return f"{RESULTS}/checkpoints/{model}/{dataset}/{strategy}/seed{seed}"


def run_outputs(
    model: str = "{model}",
    dataset: str = "{dataset}",
    strategy: str = "{strategy}",
    seed: int | str = "{seed}",
) -> dict[str, str]:
    """Checkpoint, sidecar, per-epoch CSV and loss/Dice curve of one run, keyed as :data:`RUN_SUFFIXES`."""
    stem = checkpoint_stem(model, dataset, strategy, seed)
    return {kind: stem + suffix for kind, suffix in RUN_SUFFIXES.items()}


def checkpoint(
    model: str = "{model}",
    dataset: str = "{dataset}",
    strategy: str = "{strategy}",
    seed: int | str = "{seed}",
) -> str:
    """Fine-tuned checkpoint (trained tensors) of one run."""
    return run_outputs(model, dataset, strategy, seed)["checkpoint"]


def checkpoint_sidecar(
    model: str = "{model}",
    dataset: str = "{dataset}",
    strategy: str = "{strategy}",
    seed: int | str = "{seed}",
) -> str:
    """JSON sidecar of one run's checkpoint."""
    return run_outputs(model, dataset, strategy, seed)["sidecar"]


def tiny_sam_pretrained(suffix: str = RUN_SUFFIXES["checkpoint"]) -> str:
    """The workflow's pretrained tiny SAM (``suffix`` as in :data:`RUN_SUFFIXES`)."""
    return f"{RESULTS}/checkpoints/tiny_sam/pretrained{suffix}"


# --- segmentation evaluation --------------------------------------------------------------------------


def seg_metrics(
    model: str = "{model}",
    strategy: str = "{strategy}",
    seed: int | str = "{seed}",
    dataset: str = "{dataset}",
) -> str:
    """Per-image metrics of one (model, strategy, training seed, dataset): the rows of ``clean``, every
    perturbation type and, when the model is attacked, ``fgsm`` and ``pgd`` (column ``perturbation``)."""
    return f"{RESULTS}/metrics/segmentation/{model}/{strategy}/seed{seed}/{dataset}.parquet"


# --- VLM stage ----------------------------------------------------------------------------------------


def vlm_samples(dataset: str = "{vlm_dataset}", task: str = "{task}") -> str:
    """Sample table of one VLM dataset and task."""
    return f"{RESULTS}/vlm/data/{dataset}/{task}.parquet"


def vlm_perturbed(dataset: str = "{vlm_dataset}", perturbation: str = "{perturbation}") -> str:
    """Perturbed VLM inputs of one dataset and type."""
    return f"{RESULTS}/vlm/perturbed/{dataset}/{perturbation}.parquet"


def vlm_model_dir(model: str = "{vlm_model}") -> str:
    """Weights folder of a tiny VLM trained by the workflow."""
    return f"{RESULTS}/vlm/models/{model}"


def vlm_model_info(model: str = "{vlm_model}") -> str:
    """Training summary of a tiny VLM."""
    return f"{vlm_model_dir(model)}.json"


def vlm_adapter(model: str = "{vlm_model}", suffix: str = "") -> str:
    """Grounding LoRA adapter folder of a model (``suffix``: ``.json`` summary, ``.resume.pt`` state)."""
    return f"{RESULTS}/vlm/adapters/{model}/grounding{suffix}"


def vlm_metrics(
    model: str = "{vlm_model}", task: str = "{task}", dataset: str = "{vlm_dataset}", name: str = "{name}"
) -> str:
    """Per-sample metrics of one (model, task, dataset) under condition ``name``."""
    return f"{RESULTS}/metrics/vlm/{model}/{task}/{dataset}/{name}.parquet"


# --- report stage -------------------------------------------------------------------------------------


def table(name: str, ext: str) -> str:
    """One table file (``ext`` in :data:`TABLE_EXTS`)."""
    return f"{RESULTS}/tables/{name}.{ext}"


def table_cells(kind: str) -> str:
    """Long cells of every table of ``kind`` (``segmentation`` or ``vlm``)."""
    return f"{RESULTS}/tables/{kind}_cells.parquet"


def figure(name: str, ext: str) -> str:
    """One figure panel file (``ext`` in :data:`FIGURE_EXTS`)."""
    return f"{RESULTS}/figures/{name}.{ext}"


def report_contact_sheets_dir() -> str:
    """Folder of the report's copies of the contact sheets."""
    return f"{RESULTS}/report/contact_sheets"


def report_contact_sheet(modality: str = "{modality}") -> str:
    """The report's copy of one modality's contact sheet."""
    return f"{report_contact_sheets_dir()}/{modality}.png"


# --- logs and benchmarks ------------------------------------------------------------------------------


def log(rule: str, pattern: str) -> str:
    """``logs/<rule>/<pattern>.log``: log paths mirror the output wildcards."""
    return f"logs/{rule}/{pattern}.log"


def benchmark(rule: str, pattern: str) -> str:
    """``benchmarks/<rule>/<pattern>.tsv``."""
    return f"benchmarks/{rule}/{pattern}.tsv"
