"""Persistent per-request answer cache: one JSON file per request key, written atomically.

A key is the SHA-256 of the canonical JSON of everything that determines an answer (model, system prompt,
prompt, image hash, generation settings). The image hash is taken over the decoded pixels (dtype, shape and
array bytes; :func:`pixel_hash`), never over encoded bytes, so the same image encoded twice (another PNG
encoder, level or version) hits the same entry. Files live at ``<root>/<key[:2]>/<key>.json``; each is written
with :func:`medfm_robust.io.write_json_atomic` as soon as its answer arrives, so a killed run keeps every
finished answer and concurrent writers (threads or processes) never see half-written files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medfm_robust.io import array_hash, decode_png, write_json_atomic

log = logging.getLogger(__name__)


def request_key(payload: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical (key-sorted, compact) JSON of ``payload``."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pixel_hash(image_png: bytes | None) -> str | None:
    """SHA-256 of the pixels of PNG bytes (:func:`medfm_robust.io.array_hash` of the decoded array)."""
    return None if image_png is None else array_hash(decode_png(image_png, source="API request image"))


class RequestCache:
    """A folder of cached responses keyed by :func:`request_key`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """The file holding ``key``'s record."""
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached record for ``key`` or None. An unreadable file is logged and treated as absent."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            record = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("%s: unreadable cache entry (%s); the request will be sent again", p, exc)
            return None
        if not isinstance(record, dict) or record.get("key") != key:
            log.warning("%s: cache entry does not match its key; the request will be sent again", p)
            return None
        return record

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Store ``record`` (its ``key`` field is set) atomically."""
        write_json_atomic(self.path(key), {**record, "key": key})

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None
