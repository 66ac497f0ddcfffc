"""Configuration loading and validation against ``config/schema.yaml`` (JSON Schema 2020-12).

Defaults live in the schema (``default`` fields) and are filled in by :func:`validate_config`; an unknown
key, a wrong type or a value outside its enum raises :class:`ConfigError` naming the key path.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from medfm_robust.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "config" / "schema.yaml"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping top level raises ``ConfigError``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: configuration file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return data


def _extend_with_defaults(validator_class: Any) -> Any:
    """A jsonschema validator class that also fills in ``default`` values (as Snakemake's validate does)."""
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
    return config


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
