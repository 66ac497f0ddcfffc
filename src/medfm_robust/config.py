"""Configuration loading and validation against ``config/schema.yaml`` (JSON Schema 2020-12).

Defaults live in the schema (``default`` fields) and are filled in by :func:`validate_config`; an unknown
key, a wrong type or a value outside its enum raises :class:`ConfigError` naming the key path, and so do
the cross-field checks the schema cannot express (:func:`cross_field_problems`). YAML files are read
strictly: a duplicated key or a syntax error names the file and line. ``python -m medfm_robust.config
FILE...`` checks config files from the shell.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from medfm_robust.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "config" / "schema.yaml"


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicated mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` (overriding a merged key is allowed)
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first defined at line {seen[key]})", key_node.start_mark
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(path: Path, exc: yaml.YAMLError) -> ConfigError:
    """``<file>:<line>:<column>: <problem>`` for a YAML error (the line of the problem, 1-based)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    detail = f"{problem} ({context})" if context and "duplicate key" not in problem else problem
    return ConfigError(f"{where}: invalid YAML: {detail}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping strictly; a missing file, a YAML syntax error, a duplicated key or a non-mapping
    top level raises ``ConfigError`` (syntax errors and duplicates name the file and line)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: configuration file not found")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_StrictLoader) or {}  # a SafeLoader
    except yaml.YAMLError as exc:
        raise _yaml_error(p, exc) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return data


@functools.cache
def _extend_with_defaults(validator_class: Any) -> Any:
    """A jsonschema validator class that also fills in ``default`` values (as Snakemake's validate does);
    one class per base class (built once)."""
    from jsonschema import validators

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Any, instance: Any, schema: Any) -> Any:
        if isinstance(instance, dict):
            for prop, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema and prop not in instance:
                    instance[prop] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def _format_path(path: Any) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "<top level>"


def validate_config(config: dict[str, Any], schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate ``config`` in place (defaults filled in) and return it.

    Raises ``ConfigError`` with one line per problem, each naming the dotted key path.
    """
    from jsonschema import Draft202012Validator

    judge_set = "endpoint" in ((config.get("vlm") or {}).get("judge") or {})
    schema = load_yaml(schema_path)
    cls = _extend_with_defaults(Draft202012Validator)
    errors = sorted(cls(schema).iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for err in errors:
            where = _format_path(err.absolute_path)
            if err.validator == "additionalProperties":
                extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
                pattern = err.schema.get("patternProperties")
                if pattern:
                    import re

                    extra = [k for k in extra if not any(re.search(p, k) for p in pattern)]
                for key in extra:
                    full = f"{where}.{key}" if err.absolute_path else key
                    lines.append(f"config key '{full}': unknown key")
                if not extra:
                    lines.append(f"config key '{where}': {err.message}")
            else:
                lines.append(f"config key '{where}': {err.message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(dict.fromkeys(lines)))
    problems = cross_field_problems(config, judge_endpoint_set=judge_set)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return config


def default_config(schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """An empty configuration with every schema default filled in: what each omitted key means (library
    callers and tests take their defaults from here, never from literals of their own)."""
    return validate_config({}, schema_path)


@functools.lru_cache(maxsize=4)
def _schema(schema_path: str) -> dict[str, Any]:
    return load_yaml(schema_path)


def _resolve(schema: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow a local ``$ref`` (``#/a/b``) to the node it names."""
    while "$ref" in node:
        target: Any = schema
        for part in str(node["$ref"]).lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def _section_node(section: str, schema_path: str | Path) -> tuple[dict[str, Any], Mapping[str, Any]]:
    """(schema, the resolved node of ``section``); raises ``KeyError`` when no such section exists."""
    schema = _schema(str(schema_path))
    node: Mapping[str, Any] = schema
    for part in section.split("."):
        node = _resolve(schema, node)
        if part == "*":
            node = node.get("items") or node.get("additionalProperties") or {}
        else:
            node = node.get("properties", {})[part]
    return schema, _resolve(schema, node)


@functools.lru_cache(maxsize=64)
def _section_validator(section: str, schema_path: str) -> Any:
    """The default-filling validator of one section's schema (built once per section)."""
    from jsonschema import Draft202012Validator

    schema, node = _section_node(section, schema_path)
    return _extend_with_defaults(Draft202012Validator)(schema).evolve(schema=node)


def section_defaults(section: str, schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The schema's defaults of one config section, e.g. ``"vlm.api"``, ``"vlm.models.*"`` (``*``: one entry
    of a list or of a name-keyed mapping) or ``"segmentation.models.*"``: what validation fills into an
    empty section (nested defaults included; fresh copies).

    Raises:
        KeyError: ``section`` names no object of the schema.
    """
    return with_defaults(section, {}, schema_path)


def with_defaults(section: str, values: Mapping[str, Any] | None,
                  schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """A copy of ``values`` (a section of a config, possibly partial, e.g. handed to a library function by a
    test or a script) with the schema's defaults of ``section`` filled in exactly as :func:`validate_config`
    fills them (the same default-filling validator, run on that section's schema). Only defaults are
    applied here; checking the values is validation's job."""
    validator = _section_validator(section, str(schema_path))
    out = copy.deepcopy(dict(values or {}))
    for _ in validator.iter_errors(out):  # filling happens while the instance is walked
        pass
    return out


def _band_problems(key: str, bands: Any) -> list[str]:
    """Each SSIM band ``[lo, hi]`` must have lo < hi, and level k+1 must lie below level k (more severe)."""
    out = []
    for i, band in enumerate(bands or []):
        if len(band) == 2 and band[0] >= band[1]:
            out.append(f"config key '{key}[{i}]': inverted SSIM band {list(band)} (level {i + 1}: lower "
                       "bound must be below the upper)")
    for i in range(len(bands or []) - 1):
        upper, lower = bands[i], bands[i + 1]
        if len(upper) == 2 and len(lower) == 2 and (lower[0] > upper[0] or lower[1] > upper[1]):
            out.append(f"config key '{key}[{i + 1}]': band {list(lower)} of level {i + 2} lies above band "
                       f"{list(upper)} of level {i + 1} (higher levels must have lower SSIM)")
    return out


def _api_endpoint_missing(name: str, spec: Mapping[str, Any], endpoints: Mapping[str, Any]) -> list[str]:
    """What an API model lacks: base URL, model id or key variable (from its endpoint or its overrides)."""
    endpoint = endpoints.get(name) or {}
    have = {
        "base_url": spec.get("base_url") or endpoint.get("base_url"),
        "model": spec.get("api_model") or endpoint.get("model"),
        "api_key_env": spec.get("api_key_env") or endpoint.get("api_key_env"),
    }
    return [k for k, v in have.items() if not v]


def _held_out_problems(config: Mapping[str, Any]) -> list[str]:
    """``finetune.pretrain_tiny_sam.held_out``: tiny SAM's pretraining and fine-tuning datasets are given
    and disjoint."""
    finetune = config.get("finetune") or {}
    pretrain = finetune.get("pretrain_tiny_sam") or {}
    if not pretrain.get("held_out"):
        return []
    tuned = ((finetune.get("models") or {}).get("tiny_sam") or {}).get("datasets")
    seen = pretrain.get("datasets")
    if seen is None or tuned is None:
        return ["config key 'finetune.pretrain_tiny_sam.held_out': needs both finetune.pretrain_tiny_sam."
                "datasets and finetune.models.tiny_sam.datasets as lists"]
    both = sorted(set(seen) & set(tuned))
    if both:
        return [f"config key 'finetune.pretrain_tiny_sam.datasets': {both} also in finetune.models.tiny_sam."
                "datasets (held_out: the fine-tuning datasets must be left out of pretraining)"]
    return []


def cross_field_problems(config: Mapping[str, Any], *, judge_endpoint_set: bool = True) -> list[str]:
    """Problems between keys that the schema cannot see, one line each naming the key path.

    SSIM bands inverted or out of severity order; a type both included and excluded; a local VLM without
    a path; an API model without a complete endpoint; an unknown
    judge endpoint (checked when judging is enabled or the endpoint was set); demo VLM sources and organs
    that are not datasets; tiny-training / grounding data sets that are not VLM datasets (when used); tiny
    SAM's pretraining and fine-tuning datasets overlapping under ``finetune.pretrain_tiny_sam.held_out``.
    """
    out: list[str] = []
    perturb = config.get("perturb") or {}
    out += _band_problems("perturb.bands", perturb.get("bands"))
    for name, spec in sorted((perturb.get("overrides") or {}).items()):
        if isinstance(spec, Mapping) and "bands" in spec:
            out += _band_problems(f"perturb.overrides.{name}.bands", spec["bands"])
    vlm = config.get("vlm") or {}
    for key, section in (("perturb", perturb), ("vlm.perturbations", vlm.get("perturbations") or {})):
        both = sorted(set(section.get("include") or []) & set(section.get("exclude") or []))
        if both:
            out.append(f"config key '{key}.exclude': {both} also in {key}.include (both kept and dropped)")
    endpoints = (vlm.get("api") or {}).get("endpoints") or {}
    models = vlm.get("models") or {}
    for name, spec in sorted(models.items()):
        if spec.get("kind") == "local" and spec["enabled"] and not spec.get("path"):
            out.append(f"config key 'vlm.models.{name}.path': required for a local model (its checkpoint "
                       "folder, relative to resources_dir)")
        if spec.get("kind") == "api":
            missing = _api_endpoint_missing(name, spec, endpoints)
            if missing:
                out.append(f"config key 'vlm.models.{name}': API model without an endpoint (missing "
                           f"{', '.join(missing)}): add vlm.api.endpoints.{name} or set base_url, api_model "
                           "and api_key_env on the model")
    judge = vlm.get("judge") or {}
    if (judge.get("enabled") or judge_endpoint_set) and judge.get("endpoint") not in endpoints:
        out.append(f"config key 'vlm.judge.endpoint': unknown endpoint '{judge.get('endpoint')}' (known: "
                   f"{', '.join(sorted(endpoints)) or 'none'})")
    datasets = config.get("datasets") or {}
    vlm_datasets = vlm.get("datasets") or {}
    for name, spec in sorted(vlm_datasets.items()):
        for key in ("sources", "organs"):
            unknown = sorted(set(spec.get(key) or []) - set(datasets))
            if unknown:
                out.append(f"config key 'vlm.datasets.{name}.{key}': unknown dataset(s) {unknown} (known: "
                           f"{', '.join(sorted(datasets)) or 'none'})")
    used = {
        "vlm.tiny_training.dataset": (vlm.get("tiny_training") or {}).get("dataset")
        if any(s.get("kind") == "tiny" for s in models.values()) else None,
        "vlm.grounding_finetune.dataset": (vlm.get("grounding_finetune") or {}).get("dataset")
        if any(s.get("kind") != "api" and s.get("grounding_finetune") for s in models.values()) else None,
    }
    for key, value in used.items():
        if value is not None and value not in vlm_datasets:
            out.append(f"config key '{key}': '{value}' is not a VLM dataset (known: "
                       f"{', '.join(sorted(vlm_datasets)) or 'none'})")
    out += _held_out_problems(config)
    return out


def missing_credentials(
    config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    """API-key variables that jobs of this configuration need but the environment lacks.

    Returns ``{variable: [what needs it, ...]}`` for every enabled API model (when there are VLM datasets)
    and the LLM judge (when enabled); empty when every key is set.
    """
    env = os.environ if environ is None else environ
    vlm = config.get("vlm") or {}
    if not vlm.get("datasets"):
        return {}
    endpoints = (vlm.get("api") or {}).get("endpoints") or {}
    needs: dict[str, list[str]] = {}
    for name, spec in sorted((vlm.get("models") or {}).items()):
        if spec.get("kind") == "api" and spec["enabled"]:
            var = spec.get("api_key_env") or (endpoints.get(name) or {}).get("api_key_env")
            if var:
                needs.setdefault(var, []).append(f"vlm.models.{name}")
    judge = vlm.get("judge") or {}
    if judge.get("enabled") and judge.get("tasks"):
        var = (endpoints.get(judge.get("endpoint")) or {}).get("api_key_env")
        if var:
            needs.setdefault(var, []).append(f"vlm.judge (endpoint {judge.get('endpoint')})")
    return {var: users for var, users in needs.items() if not env.get(var)}


def check_config_files(paths: Iterable[str | Path]) -> None:
    """Read every config file strictly (duplicated keys, syntax errors: file and line); missing ones are
    skipped (the caller reports them)."""
    for path in paths:
        if Path(path).is_file():
            load_yaml(path)


def load_config(path: str | Path, schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Load and validate a config file, returning it with defaults filled in."""
    return validate_config(load_yaml(path), schema_path)


def config_hash(obj: Any) -> str:
    """Short stable hash of a JSON-serialisable settings object (for sidecars and cache keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m medfm_robust.config FILE...``: validate config files (file and line for YAML errors)."""
    args = sys.argv[1:] if argv is None else argv
    status = 0
    for path in args:
        try:
            load_config(path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            status = 1
        else:
            print(f"{path}: valid")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
