"""Workflow helpers of ``rules/vlm.smk``: which files each VLM job reads and writes, and which settings it
depends on (so that changing one model's or one stage's setting re-runs only what depends on it).

Every function takes the validated workflow ``config``; nothing here touches files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medfm_robust import paths
from medfm_robust.config import with_defaults
from medfm_robust.vlm.datasets import dataset_modalities, dataset_sources, dataset_tasks, get_reader

Config = Mapping[str, Any]


def alternatives(names: list[str]) -> str:
    """A wildcard regex matching exactly ``names`` (never matching when empty)."""
    return "|".join(sorted(names)) if names else "NO_MATCH^"


def models(config: Config, *, kinds: tuple[str, ...] = ("local", "tiny", "api"),
           enabled: bool = False) -> list[str]:
    """Model names of ``kinds`` (only enabled ones with ``enabled=True``)."""
    return sorted(m for m, s in config["vlm"]["models"].items()
                  if s["kind"] in kinds and (with_defaults("vlm.models.*", s)["enabled"] or not enabled))


def sources(config: Config, dataset: str) -> list[str]:
    """Canonical datasets feeding a VLM dataset (the demo: all unless ``sources`` is set; none for a
    publisher's dataset), sorted."""
    return sorted(dataset_sources(config["vlm"]["datasets"][dataset], config))


def modalities(config: Config, dataset: str) -> list[str]:
    """Modalities a VLM dataset can hold (:func:`medfm_robust.vlm.datasets.dataset_modalities`: the demo's
    sources and showcase images; a publisher's dataset: any, until its samples are read)."""
    return dataset_modalities(config["vlm"]["datasets"][dataset], config)


def levels(config: Config) -> list[int]:
    """Perturbation levels of the VLM inputs (``vlm.perturbations.levels``, default ``perturb.levels``)."""
    own = config["vlm"]["perturbations"].get("levels")
    return sorted(own or config["perturb"]["levels"])


def types(config: Config) -> list[str]:
    """Perturbation types of every VLM dataset (one list; a type fitting none of a dataset's samples gives
    empty tables), in registry order."""
    from medfm_robust.vlm.perturb import vlm_perturbations

    pert = config["vlm"]["perturbations"]
    mods = sorted({m for d in config["vlm"]["datasets"] for m in modalities(config, d)})
    return vlm_perturbations(mods, pert["include"] or None, pert["exclude"] or None)


def sample_inputs(config: Config, dataset: str) -> list[str] | str:
    """Inputs of a sample table: demo -> every canonical shard of the sources; real -> the dataset folder."""
    spec = config["vlm"]["datasets"][dataset]
    if get_reader(spec["adapter"]).sources is not None:
        return [paths.data_shard(d, s) for d in sources(config, dataset)
                for s in ("train", "val", "test")]
    path = Path(spec["path"])
    return str(path if path.is_absolute() or path.exists() else Path(config["resources_dir"]) / path)


def tables(config: Config, dataset: str) -> list[str]:
    """Every sample table of a VLM dataset."""
    tasks = dataset_tasks(config["vlm"]["datasets"][dataset])
    return [paths.vlm_samples(dataset, t) for t in tasks]


def canonical_shards(config: Config, dataset: str, perturbation: str) -> list[str]:
    """Canonical perturbed shards of a demo dataset's sources that hold ``perturbation`` at the VLM levels
    (reused instead of recomputed)."""
    from medfm_robust.perturb import workflow as perturb_wf

    if perturb_wf.settings_for(config, perturbation)["levels"] != levels(config):
        return []
    return [paths.perturbed_shard(d, perturbation) for d in sources(config, dataset)
            if perturbation in perturb_wf.types_for(config, d)]


def perturb_inputs(config: Config, dataset: str) -> dict[str, list[str]]:
    """Inputs of ``vlm_perturb``: the sample tables and the reusable canonical shards."""
    return {
        "samples": tables(config, dataset),
        "canonical": sorted({s for t in types(config) for s in canonical_shards(config, dataset, t)}),
    }


def perturb_params(config: Config, dataset: str) -> dict[str, Any]:
    """Only what the perturbed inputs of one VLM dataset depend on."""
    pert = config["vlm"]["perturbations"]
    return {
        "types": types(config),
        "canonical": {t: canonical_shards(config, dataset, t) for t in types(config)},
        "levels": levels(config),
        "bands": config["perturb"]["bands"],
        "max_evals": config["perturb"]["max_evals"],
        "include": pert["include"],
        "exclude": pert["exclude"],
        "overrides": {t: o for t, o in config["perturb"].get("overrides", {}).items() if t in types(config)},
        "seed": config["seed"],
    }


def model_dir(config: Config, model: str) -> str | list[str]:
    """A model's weights folder: tiny models trained by the workflow, real ones under resources_dir."""
    spec = config["vlm"]["models"][model]
    if spec["kind"] == "tiny":
        return paths.vlm_model_dir(model)
    if spec["kind"] == "local" and spec.get("path"):
        path = Path(spec["path"])
        return str(path if path.is_absolute() else Path(config["resources_dir"]) / path)
    return []


def uses_adapter(config: Config, model: str, task: str) -> bool:
    """Grounding of an open model flagged ``grounding_finetune`` is evaluated with its LoRA adapter."""
    spec = config["vlm"]["models"][model]
    return task == "grounding" and spec["kind"] != "api" and bool(spec.get("grounding_finetune"))


def max_new_tokens(config: Config, model: str, task: str) -> int:
    """The model's per-task override, else ``vlm.tasks.<task>.max_new_tokens``."""
    own = config["vlm"]["models"][model].get("max_new_tokens", {})
    return int(own.get(task, config["vlm"]["tasks"][task]["max_new_tokens"]))


def eval_inputs(config: Config, model: str, task: str, dataset: str) -> dict[str, Any]:
    """Inputs of one evaluation job: weights (+ adapter), sample table, VLM and canonical perturbed shards."""
    all_types = types(config)
    inputs: dict[str, Any] = {
        "samples": paths.vlm_samples(dataset, task),
        "perturbed": [paths.vlm_perturbed(dataset, t) for t in all_types],
        "canonical": sorted({s for t in all_types for s in canonical_shards(config, dataset, t)}),
        "model": model_dir(config, model),
    }
    if uses_adapter(config, model, task):
        inputs["adapter"] = paths.vlm_adapter(model)
    return inputs


def eval_params(config: Config, model: str, task: str, dataset: str) -> dict[str, Any]:
    """Only what one (model, task, dataset) evaluation depends on."""
    pert = config["vlm"]["perturbations"]
    return {
        "spec": dict(config["vlm"]["models"][model]),
        "types": types(config),
        "canonical": {t: canonical_shards(config, dataset, t) for t in types(config)},
        "max_new_tokens": max_new_tokens(config, model, task),
        "levels": levels(config),
        "include": pert["include"],
        "exclude": pert["exclude"],
        "resources_dir": config["resources_dir"],
        "scoring": scoring_params(config, task),
        "controls": controls(config),
        "prompt": prompt_params(config, task),
    }


def controls(config: Config) -> list[str]:
    """The image-blind control conditions of every evaluation (``vlm.controls``), in a fixed order."""
    from medfm_robust.vlm.run import CONTROLS

    own = config["vlm"].get("controls", list(CONTROLS))
    return [c for c in CONTROLS if c in own]


def prompt_params(config: Config, task: str) -> dict[str, str]:
    """The task's prompt ``template`` / ``option_line`` when configured (``vlm.tasks.<task>``), checked."""
    from medfm_robust.vlm.prompts import check_prompt

    spec = config["vlm"]["tasks"].get(task, {})
    keys = (("template", "prompt"), ("option_line", "option_line"))
    out = {k: str(spec[c]) for k, c in keys if spec.get(c)}
    check_prompt(task, out.get("template"), out.get("option_line"))
    return out


def scoring_params(config: Config, task: str) -> dict[str, Any]:
    """Scoring settings of one task: caption tokenisation/METEOR, and the LLM judge when it is enabled."""
    vlm = config["vlm"]
    out: dict[str, Any] = {}
    if task == "caption":
        cap = with_defaults("vlm.tasks.caption", vlm["tasks"].get("caption"))
        out.update(caption_tokenizer=cap["tokenizer"], meteor=cap["meteor"])
    judge = with_defaults("vlm.judge", vlm.get("judge"))
    if judge["enabled"] and task in judge.get("tasks", []):
        api = {k: v for k, v in vlm["api"].items() if k != "endpoints"}
        api["endpoints"] = {judge["endpoint"]: vlm["api"]["endpoints"].get(judge["endpoint"], {})}
        out["judge_cfg"] = {"judge": dict(judge), "api": api}
    return out


def api_params(config: Config, model: str) -> dict[str, Any]:
    """API client settings for one model: cache, retries, its own endpoint only (no judge settings)."""
    api = {k: v for k, v in config["vlm"]["api"].items() if k != "endpoints"}
    api["endpoints"] = {model: config["vlm"]["api"]["endpoints"].get(model, {})}
    return api


def conditions(config: Config) -> list[str]:
    """Condition names of every evaluation job: ``clean``, the image-blind controls, then the types."""
    return ["clean", *controls(config), *types(config)]


def metric_outputs(config: Config) -> dict[str, str]:
    """Named output patterns of an evaluation job: one table per condition (:func:`conditions`)."""
    return {name: paths.vlm_metrics(name=name) for name in conditions(config)}


def evaluated_runs(config: Config) -> list[tuple[str, str, str]]:
    """Every evaluated (model, task, dataset): enabled models on the tasks of each VLM dataset they do."""
    return [
        (m, task, d)
        for m in models(config, enabled=True)
        for d in sorted(config["vlm"]["datasets"])
        for task in dataset_tasks(config["vlm"]["datasets"][d])
        if task in config["vlm"]["models"][m]["tasks"]
    ]


def final_targets(config: Config) -> list[str]:
    """Metric tables of every enabled model on every task of every VLM dataset it is evaluated on."""
    names = conditions(config)
    return [paths.vlm_metrics(m, task, d, c) for m, task, d in evaluated_runs(config) for c in names]
