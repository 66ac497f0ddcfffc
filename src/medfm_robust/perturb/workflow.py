"""Helpers behind ``rules/perturb.smk`` (kept here so the rule file stays declarative and they are tested).

Each takes the validated workflow ``config`` (with defaults filled in).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medfm_robust import paths
from medfm_robust.errors import ConfigError
from medfm_robust.perturb.registry import applicable_types, get_spec


def types_for(config: Mapping[str, Any], dataset: str) -> list[str]:
    """Perturbation types produced for ``dataset`` in registry order: its ``perturb.per_dataset`` list, else
    its modality's applicable types; then ``perturb.include`` / ``exclude``.

    Raises:
        ConfigError: ``perturb.per_dataset`` names a dataset that is not configured, or a type that is not
            applicable to the dataset's modality.
    """
    cfg = config["perturb"]
    per_dataset = cfg.get("per_dataset") or {}
    unknown = sorted(set(per_dataset) - set(config["datasets"]))
    if unknown:
        raise ConfigError(f"config key 'perturb.per_dataset': unknown dataset(s) {unknown}")
    modality = config["datasets"][dataset].get("modality")
    if not modality:
        return []
    types = applicable_types(modality, cfg["include"], cfg["exclude"])
    listed = per_dataset.get(dataset)
    if listed is None:
        return types
    bad = [t for t in listed if t not in applicable_types(modality)]
    if bad:
        raise ConfigError(
            f"config key 'perturb.per_dataset.{dataset}': {bad} not applicable to modality '{modality}'"
        )
    return [t for t in types if t in listed]


def settings_for(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Only the settings one perturbation type's shards depend on (its overrides over the global ones).

    ``options`` are the type's registry options with defaults filled in (an unknown option or value raises
    ``ConfigError`` naming the type, at DAG time)."""
    cfg = config["perturb"]
    own = cfg["overrides"].get(name, {})
    return {
        "levels": sorted(own.get("levels", cfg["levels"])),
        "bands": own.get("bands", cfg["bands"]),
        "param_range": own.get("param_range"),
        "max_evals": own.get("max_evals", cfg["max_evals"]),
        "options": get_spec(name).check_options(own.get("options")),
        "max_images": cfg["max_images"],
        "seed": config["seed"],
    }


def shards_of(config: Mapping[str, Any], dataset: str) -> list[str]:
    """Every perturbed shard path of ``dataset``."""
    return [paths.perturbed_shard(dataset, name) for name in types_for(config, dataset)]


def sheet_dataset(config: Mapping[str, Any], datasets: Sequence[str], modality: str) -> str | None:
    """The dataset shown on a modality's contact sheet: the first (sorted) dataset of that modality."""
    names = sorted(d for d in datasets if config["datasets"][d].get("modality") == modality)
    return names[0] if names else None


def sheet_inputs(config: Mapping[str, Any], datasets: Sequence[str], modality: str) -> dict[str, Any]:
    """Inputs of one contact sheet: the dataset's test shard and its perturbed shards."""
    dataset = sheet_dataset(config, datasets, modality)
    if dataset is None:
        return {"test": [], "shards": []}
    return {"test": paths.data_shard(dataset, "test"), "shards": shards_of(config, dataset)}


def sheet_modalities(config: Mapping[str, Any], datasets: Sequence[str]) -> list[str]:
    """Modalities (sorted) with a contact sheet: those of the datasets that get perturbed shards."""
    return sorted({config["datasets"][d]["modality"] for d in datasets if types_for(config, d)})


def final_targets(config: Mapping[str, Any], datasets: Sequence[str]) -> list[str]:
    """Every perturbed shard, calibration report (CSV + JSON) and per-modality contact sheet."""
    targets: list[str] = []
    for dataset in datasets:
        if not types_for(config, dataset):
            continue
        targets += shards_of(config, dataset)
        targets += [paths.calibration_report(dataset, ext) for ext in ("csv", "json")]
    targets += [paths.contact_sheet(m) for m in sheet_modalities(config, datasets)]
    return targets
