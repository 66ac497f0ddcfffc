"""The chat-completions client itself (see :mod:`medfm_robust.vlm.api` for what it does): endpoints,
retry policy, requests and results, and :class:`APIClient`."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medfm_robust.errors import ConfigError, MedFMError
from medfm_robust.intensity import dtype_value_range, to_rgb8
from medfm_robust.io import encode_png
from medfm_robust.logs import redact, register_secret
from medfm_robust.seeding import rng_for
from medfm_robust.vlm.cache import RequestCache, pixel_hash, request_key
from medfm_robust.vlm.prompts import SYSTEM_PROMPT

log = logging.getLogger(__name__)


class APIRequestError(MedFMError):
    """Some requests still failed after all retries (their finished siblings are cached)."""


@dataclass(frozen=True)
class Endpoint:
    """One API model: where to send requests and how."""

    name: str
    base_url: str
    model: str
    api_key_env: str
    box_convention: str = "pixel"
    image_detail: str = "high"
    max_tokens_factor: float = 1.0
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, api_cfg: Mapping[str, Any],
                    overrides: Mapping[str, Any] | None = None) -> Endpoint:
        """Endpoint ``name`` from ``vlm.api.endpoints``; ``overrides`` (e.g. a ``vlm.models`` entry with
        ``base_url`` / ``api_model`` / ``api_key_env``) win over it."""
        endpoints = api_cfg.get("endpoints", {})
        spec = dict(endpoints.get(name, {}))
        for key, value in (overrides or {}).items():
            if key == "api_model":
                spec["model"] = value
            elif key in cls.__dataclass_fields__ and key != "name":
                spec[key] = value
        missing = [k for k in ("base_url", "model", "api_key_env") if not spec.get(k)]
        if missing:
            raise ConfigError(f"config key 'vlm.api.endpoints.{name}': missing {', '.join(missing)}")
        fields = {k: v for k, v in spec.items() if k in cls.__dataclass_fields__ and k != "name"}
        return cls(name=name, **fields)


@dataclass(frozen=True)
class RetryPolicy:
    """Timeout and back-off settings (seconds)."""

    timeout_s: float = 60.0
    max_retries: int = 6
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0

    def delay(self, attempt: int, key: str, retry_after: float | None = None) -> float:
        """Back-off before retry ``attempt`` (0-based): full jitter, seeded by (request key, attempt)."""
        cap = min(self.backoff_max_s, self.backoff_initial_s * (2.0**attempt))
        wait = float(rng_for("api_backoff", key, attempt).uniform(0.0, cap)) if cap > 0 else 0.0
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max_s))
        return wait


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion: text prompt, optional PNG image, generation settings."""

    prompt: str
    image_png: bytes | None = None
    max_tokens: int = 64
    system: str | None = SYSTEM_PROMPT
    temperature: float = 0.0


@dataclass(frozen=True)
class ChatResult:
    """A response (``text``) or a final ``error``; ``cached`` when no request was sent this time."""

    key: str
    text: str | None
    error: str | None = None
    finish_reason: str | None = None
    cached: bool = False
    attempts: int = 0


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def image_to_png(image: np.ndarray | bytes) -> bytes:
    """8-bit RGB PNG bytes of an ``H x W`` / ``H x W x 3`` uint8/uint16 array (uint16 -> ``value / 257``,
    no stretching: :func:`medfm_robust.intensity.to_rgb8` over the dtype's range, as the local VLMs see
    it); PNG bytes are decoded and re-encoded the same way."""
    from medfm_robust.io import decode_png

    arr = decode_png(image) if isinstance(image, bytes | bytearray) else np.asarray(image)
    return encode_png(to_rgb8(arr, dtype_value_range(arr), "API image"))


class APIClient:
    """Cached, retrying, concurrency-bounded chat-completions client for one :class:`Endpoint`.

    ``client_factory(api_key, base_url, timeout)`` builds the underlying ``openai.OpenAI`` client (tests
    may point ``base_url`` at a local server instead). ``sleep`` is injectable for tests.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        cache_dir: str | Path,
        max_concurrency: int = 4,
        retry: RetryPolicy | None = None,
        client_factory: Callable[[str, str, float], Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        temperature: float = 0.0,
    ) -> None:
        if max_concurrency < 1:
            raise ConfigError("config key 'vlm.api.max_concurrency': must be >= 1")
        self.endpoint = endpoint
        self.cache = RequestCache(cache_dir)
        self.max_concurrency = int(max_concurrency)
        self.retry = retry or RetryPolicy()
        self._factory = client_factory or _openai_factory
        self._sleep = sleep
        self._client: Any = None
        self._lock = threading.Lock()
        self.sent = 0  # requests sent (attempts included), for logs and tests
        self.temperature = float(temperature)

    # ------------------------------------------------------------------ keys and payloads
    def settings(self, req: ChatRequest) -> dict[str, Any]:
        """Generation settings that enter the cache key and the request body."""
        max_tokens = max(1, round(req.max_tokens * self.endpoint.max_tokens_factor))
        return {"temperature": float(req.temperature), "max_tokens": max_tokens,
                "image_detail": self.endpoint.image_detail, "extra_body": dict(self.endpoint.extra_body)}

    def key(self, req: ChatRequest) -> str:
        """Cache key of ``req``: (model, system, prompt, SHA-256 of the image's pixels, settings)."""
        return request_key({
            "model": self.endpoint.model, "system": req.system, "prompt": req.prompt,
            "image_pixels_sha256": pixel_hash(req.image_png),
            "settings": self.settings(req),
        })

    def messages(self, req: ChatRequest) -> list[dict[str, Any]]:
        """Chat messages: optional system turn, user turn with [text, image_url]."""
        content: list[dict[str, Any]] = [{"type": "text", "text": req.prompt}]
        if req.image_png is not None:
            url = "data:image/png;base64," + base64.b64encode(req.image_png).decode("ascii")
            image_url = {"url": url, "detail": self.endpoint.image_detail}
            content.append({"type": "image_url", "image_url": image_url})
        msgs: list[dict[str, Any]] = []
        if req.system:
            msgs.append({"role": "system", "content": req.system})
        msgs.append({"role": "user", "content": content})
        return msgs

    # ------------------------------------------------------------------ sending
    def _api_key(self) -> str:
        key = os.environ.get(self.endpoint.api_key_env, "")
        if not key:
            raise ConfigError(
                f"API model '{self.endpoint.name}': environment variable {self.endpoint.api_key_env} is not "
                f"set (needed for requests to {self.endpoint.base_url}; set "
                f"vlm.api.endpoints.{self.endpoint.name}.api_key_env to use another variable)"
            )
        register_secret(key)
        return key

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._factory(self._api_key(), self.endpoint.base_url, self.retry.timeout_s)
            return self._client

    def _send_once(self, req: ChatRequest) -> tuple[str, str | None, dict[str, Any]]:
        import openai

        settings = self.settings(req)
        client = self._get_client()
        with self._lock:
            self.sent += 1
        try:
            resp = client.chat.completions.create(
                model=self.endpoint.model, messages=self.messages(req), temperature=settings["temperature"],
                max_tokens=settings["max_tokens"], extra_body=settings["extra_body"] or None,
            )
        # Error texts may echo the request (headers included): redacted, and raised without the chain.
        except openai.RateLimitError as exc:
            raise _Retryable(f"429 rate limited: {redact(exc)}", _retry_after(exc)) from None
        except openai.APITimeoutError:
            raise _Retryable(f"timeout after {self.retry.timeout_s} s") from None
        except openai.APIConnectionError as exc:
            raise _Retryable(f"connection error: {redact(exc)}") from None
        except openai.APIResponseValidationError as exc:
            raise _Retryable(f"malformed response: {redact(exc)}") from None
        except openai.APIStatusError as exc:
            if exc.status_code >= 500 or exc.status_code in (408, 409, 429):
                raise _Retryable(f"HTTP {exc.status_code}: {redact(exc)}", _retry_after(exc)) from None
            if exc.status_code in (401, 403, 404):
                raise ConfigError(
                    f"API model '{self.endpoint.name}': HTTP {exc.status_code} from "
                    f"{self.endpoint.base_url} (check {self.endpoint.api_key_env} and model "
                    f"'{self.endpoint.model}'): {redact(exc)}"
                ) from None
            raise
        except json.JSONDecodeError as exc:
            raise _Retryable(f"malformed JSON: {redact(exc)}") from None
        except openai.OpenAIError as exc:
            raise APIRequestError(f"API model '{self.endpoint.name}': {redact(exc)}") from None
        choices = getattr(resp, "choices", None)
        if isinstance(resp, str) or not choices:
            raise _Retryable(f"malformed response without choices: {redact(str(resp)[:200])!r}")
        choice = choices[0]
        message = getattr(choice, "message", None)
        if message is None:
            raise _Retryable("malformed response: choice without message")
        text = redact(message.content or "")  # an answer that echoes the request does not store the key
        finish = getattr(choice, "finish_reason", None)
        if not text and finish == "length":
            log.warning("%s: empty answer with finish_reason=length (raise max_tokens_factor?)",
                        self.endpoint.name)
        usage = getattr(resp, "usage", None)
        usage_d = usage.model_dump() if hasattr(usage, "model_dump") else {}
        return text, finish, {"usage": usage_d, "response_model": getattr(resp, "model", None)}

    def complete(self, req: ChatRequest) -> ChatResult:
        """Answer ``req`` from the cache or by sending it (with retries); stores a new answer at once.

        After the last retry the result carries ``error`` (and nothing is cached). A 400-type refusal is
        returned as an error result too; 401/403/404 and a missing key raise ``ConfigError``.
        """
        import openai

        key = self.key(req)
        hit = self.cache.get(key)
        if hit is not None:
            return ChatResult(key, hit.get("text"), None, hit.get("finish_reason"), cached=True)
        last = ""
        for attempt in range(self.retry.max_retries + 1):
            try:
                text, finish, extra = self._send_once(req)
            except _Retryable as exc:
                last = str(exc)
                if attempt < self.retry.max_retries:
                    wait = self.retry.delay(attempt, key, exc.retry_after)
                    log.info("%s: %s; retry %d/%d in %.2f s", self.endpoint.name, last, attempt + 1,
                             self.retry.max_retries, wait)
                    self._sleep(wait)
                continue
            except openai.APIStatusError as exc:
                error = f"HTTP {exc.status_code}: {redact(exc)}"
                log.warning("%s: request refused (%s); recorded as an empty answer", self.endpoint.name,
                            error)
                return ChatResult(key, None, error, attempts=attempt + 1)
            self.cache.put(key, {
                "text": text, "finish_reason": finish, "endpoint": self.endpoint.name,
                "model": self.endpoint.model, "prompt": req.prompt, "system": req.system,
                "image_pixels_sha256": pixel_hash(req.image_png),
                "settings": self.settings(req), "created": time.time(), **extra,
            })
            return ChatResult(key, text, None, finish, cached=False, attempts=attempt + 1)
        return ChatResult(key, None, f"failed after {self.retry.max_retries + 1} attempts: {last}",
                          attempts=self.retry.max_retries + 1)

    def complete_many(self, requests: Sequence[ChatRequest], *, progress: bool = True,
                      raise_on_error: bool = True) -> list[ChatResult]:
        """Answer every request (results in input order) with at most ``max_concurrency`` in flight.

        Cached answers are served first; the API key is checked once before anything is sent. With
        ``raise_on_error`` an :class:`APIRequestError` is raised *after* all requests ran if some still
        failed after their retries (finished answers are already cached, so a re-run sends only those).
        """
        from tqdm.auto import tqdm

        keys = [self.key(r) for r in requests]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)  # identical requests in one batch are sent (and paid) once
        todo = [k for k in first if self.cache.get(k) is None]
        log.info("%s: %d requests (%d distinct), %d cached, %d to send", self.endpoint.name, len(requests),
                 len(first), len(first) - len(todo), len(todo))
        if todo:
            self._get_client()  # a missing key stops here, before any work
        by_key: dict[str, ChatResult] = {}
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency)
        try:
            with tqdm(total=len(first), desc=f"api {self.endpoint.name}", disable=not progress,
                      leave=False) as bar:
                futures = {pool.submit(self.complete, requests[i]): k for k, i in first.items()}
                for fut in as_completed(futures):
                    by_key[futures[fut]] = fut.result()  # a ConfigError (bad key) stops the batch
                    bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        results = [by_key[k] for k in keys]
        out = results
        failed = [by_key[k] for k in first if by_key[k].error is not None
                  and str(by_key[k].error).startswith("failed after")]
        if failed and raise_on_error:
            raise APIRequestError(
                f"API model '{self.endpoint.name}': {len(failed)} of {len(first)} requests failed after "
                f"retries (first: {failed[0].error}); {len(first) - len(failed)} answers are cached, re-run "
                "to resume"
            )
        return out


def _retry_after(exc: Any) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def _openai_factory(api_key: str, base_url: str, timeout: float) -> Any:
    import openai

    return openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
