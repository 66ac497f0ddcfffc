"""Entry points from the workflow config: a client per endpoint / API model, and batched generation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medfm_robust.config import with_defaults
from medfm_robust.vlm.api.client import APIClient, ChatRequest, Endpoint, RetryPolicy, image_to_png
from medfm_robust.vlm.prompts import SYSTEM_PROMPT


def client_from_config(name: str, api_cfg: Mapping[str, Any], *, cache_dir: str | Path | None = None,
                       overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> APIClient:
    """An :class:`APIClient` for endpoint ``name`` from the ``vlm.api`` section (cache under
    ``cache_dir`` or ``vlm.api.cache_dir``)."""
    api_cfg = with_defaults("vlm.api", api_cfg)
    endpoint = Endpoint.from_config(name, api_cfg, overrides)
    retry = RetryPolicy(
        timeout_s=float(api_cfg["timeout_s"]), max_retries=int(api_cfg["max_retries"]),
        backoff_initial_s=float(api_cfg["backoff_initial_s"]), backoff_max_s=float(api_cfg["backoff_max_s"]),
    )
    root = cache_dir if cache_dir is not None else api_cfg["cache_dir"]
    kwargs.setdefault("temperature", float(api_cfg["temperature"]))
    return APIClient(endpoint, cache_dir=root, max_concurrency=int(api_cfg["max_concurrency"]),
                     retry=retry, **kwargs)


def make_client(name: str, spec: Mapping[str, Any], api_settings: Mapping[str, Any],
                cache_path: str | Path) -> APIClient:
    """Client for API model ``name`` (``vlm.models.<name>`` = ``spec`` may override the endpoint's
    ``base_url`` / ``api_model`` / ``api_key_env``), caching under ``cache_path``."""
    allowed = ("base_url", "api_model", "api_key_env", "box_convention")
    overrides = {k: v for k, v in spec.items() if k in allowed}
    return client_from_config(name, api_settings, cache_dir=cache_path, overrides=overrides)


def generate_batch(
    client: APIClient, *, images: Sequence[np.ndarray | bytes | None], prompts: Sequence[str],
    system_prompt: str | None = None, max_tokens: int = 64, progress: bool = True,
) -> list[str]:
    """Raw answers (``""`` for a refused request) for (image, prompt) pairs through ``client``.

    ``system_prompt=None`` uses :data:`~medfm_robust.vlm.prompts.SYSTEM_PROMPT`.
    """
    if len(images) != len(prompts):
        raise ValueError("images and prompts differ in length")
    temperature = client.temperature
    reqs = [ChatRequest(prompt=p, image_png=None if img is None else image_to_png(img),  # None: text only
                        max_tokens=int(max_tokens),
                        system=system_prompt if system_prompt is not None else SYSTEM_PROMPT,
                        temperature=temperature)
            for img, p in zip(images, prompts, strict=True)]
    return [r.text or "" for r in client.complete_many(reqs, progress=progress)]
