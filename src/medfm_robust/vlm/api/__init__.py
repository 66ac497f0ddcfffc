"""One OpenAI-compatible chat-completions client for the API models (``gpt_4o_mini``,
``gemini_2_5_flash``) and the optional LLM judge.

- Endpoint (base URL, model id, API-key environment variable) from ``vlm.api.endpoints.<name>``.
- Images go as ``data:image/png;base64,...`` URLs (8-bit RGB PNG; uint16 mapped by ``value / 257``).
- Bounded concurrency: :meth:`APIClient.complete_many` runs at most ``max_concurrency`` requests in threads.
- Retries on 429, 5xx, timeouts, connection errors and malformed responses (invalid JSON, no choices),
  with exponential back-off and full jitter (``min(backoff_max_s, backoff_initial_s * 2**attempt)``
  times a uniform draw; a ``Retry-After`` header is honoured up to ``backoff_max_s``).
- A persistent cache (:class:`~medfm_robust.vlm.cache.RequestCache`) keyed by (model, system prompt,
  prompt, image SHA-256, generation settings): an answer is stored the moment it arrives, so a repeated
  or interrupted run never pays twice and never loses finished answers.
- The API key is read when a request actually has to be sent; a missing variable raises
  :class:`~medfm_robust.errors.ConfigError` naming it (the workflow checks it at start-up already).
- Secrets: the key is registered with :func:`medfm_robust.logs.register_secret`, and every error text,
  log message and answer passes :func:`~medfm_robust.logs.redact` (an error body that echoes the request
  headers never shows the key); exceptions from the HTTP library are re-raised without their chain.

Modules: :mod:`.client` (the client), :mod:`.from_config` (clients and batches from the config),
:mod:`.judge` (the optional LLM judge).
"""

from medfm_robust.vlm.api.client import (
    APIClient,
    APIRequestError,
    ChatRequest,
    ChatResult,
    Endpoint,
    RetryPolicy,
    image_to_png,
)
from medfm_robust.vlm.api.from_config import client_from_config, generate_batch, make_client
from medfm_robust.vlm.api.judge import (
    JUDGE_PROMPTS,
    JUDGE_SYSTEM,
    judge_scores,
    maybe_judge,
    parse_judge_score,
)

__all__ = [
    "JUDGE_PROMPTS", "JUDGE_SYSTEM", "APIClient", "APIRequestError", "ChatRequest", "ChatResult", "Endpoint",
    "RetryPolicy", "client_from_config", "generate_batch", "image_to_png", "judge_scores", "make_client",
    "maybe_judge", "parse_judge_score",
]
