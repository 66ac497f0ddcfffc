"""The API client against a local OpenAI-compatible server on 127.0.0.1 (http.server in a thread)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from medfm_robust.errors import ConfigError
from medfm_robust.vlm.api import (
    APIClient,
    APIRequestError,
    ChatRequest,
    Endpoint,
    RetryPolicy,
    client_from_config,
    generate_batch,
    image_to_png,
    judge_scores,
    maybe_judge,
    parse_judge_score,
)

KEY_ENV = "MEDFM_TEST_API_KEY"


class FakeServer:
    """Chat-completions server; ``script`` holds the actions of the next requests (then ``ok``)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.script: list[str] = []
        self.hits = 0
        self.bodies: list[dict] = []
        self.delay = delay
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.hits += 1
                    outer.bodies.append(body)
                    action = outer.script.pop(0) if outer.script else "ok"
                if action == "429":
                    return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
                if action == "500":
                    return self._send(500, {"error": {"message": "boom"}})
                if action == "stall":
                    time.sleep(1.5)
                if action == "malformed":
                    return self._raw(200, b'{"id": "x", "choices": [ {"mess')
                if action == "nochoices":
                    return self._send(200, {"id": "x", "object": "chat.completion", "choices": []})
                if action == "400":
                    return self._send(400, {"error": {"message": "bad image"}})
                time.sleep(outer.delay)
                prompt = body["messages"][-1]["content"][0]["text"]
                reply = action[4:] if action.startswith("say:") else f"echo {prompt}"
                return self._send(200, {
                    "id": "cmpl", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": reply}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                })

            def _send(self, code: int, obj: dict, headers: dict | None = None) -> None:
                self._raw(code, json.dumps(obj).encode(), headers)

            def _raw(self, code: int, data: bytes, headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "test-key")


def make_client(server: FakeServer, cache: Path, **kw: object) -> APIClient:
    endpoint = Endpoint(name="fake", base_url=server.base_url, model="fake-model", api_key_env=KEY_ENV)
    retry = RetryPolicy(timeout_s=0.5, max_retries=int(kw.pop("max_retries", 4)), backoff_initial_s=0.01,
                        backoff_max_s=0.02)
    return APIClient(endpoint, cache_dir=cache, retry=retry, **kw)  # type: ignore[arg-type]


IMG = image_to_png(np.arange(64, dtype=np.uint8).reshape(8, 8))


def test_retries_on_429_then_succeeds_and_cache_prevents_second_call(server: FakeServer, tmp_path: Path,
                                                                     ) -> None:
    server.script = ["429", "429"]
    client = make_client(server, tmp_path / "cache")
    res = client.complete(ChatRequest(prompt="What?", image_png=IMG, max_tokens=8))
    assert res.text == "echo What?" and res.attempts == 3 and not res.cached
    assert server.hits == 3
    body = server.bodies[-1]
    url = body["messages"][-1]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and body["max_tokens"] == 8 and body["temperature"] == 0
    again = make_client(server, tmp_path / "cache").complete(ChatRequest(prompt="What?", image_png=IMG,
                                                                         max_tokens=8))
    assert again.cached and again.text == "echo What?" and server.hits == 3
    # A different image, prompt or setting is a different request.
    other = image_to_png(np.zeros((8, 8), np.uint8))
    client.complete(ChatRequest(prompt="What?", image_png=other, max_tokens=8))
    client.complete(ChatRequest(prompt="What?", image_png=IMG, max_tokens=9))
    assert server.hits == 5


@pytest.mark.parametrize("failures", [["stall"], ["malformed"], ["500", "nochoices"]])
def test_retries_on_timeout_malformed_json_and_5xx(server: FakeServer, tmp_path: Path,
                                                   failures: list[str]) -> None:
    server.script = list(failures)
    client = make_client(server, tmp_path / "cache")
    res = client.complete(ChatRequest(prompt="Q", max_tokens=4))
    assert res.error is None and res.text == "echo Q"
    assert server.hits == len(failures) + 1


def test_gives_up_after_max_retries_and_caches_nothing(server: FakeServer, tmp_path: Path) -> None:
    server.script = ["500"] * 3
    client = make_client(server, tmp_path / "cache", max_retries=2, max_concurrency=1)
    with pytest.raises(APIRequestError, match="1 of 2 requests failed"):
        client.complete_many([ChatRequest(prompt="bad"), ChatRequest(prompt="good")], progress=False)
    assert server.hits == 4  # 1 + 2 retries for the first, then the second succeeded
    assert client.cache.get(client.key(ChatRequest(prompt="good"))) is not None
    assert client.cache.get(client.key(ChatRequest(prompt="bad"))) is None


def test_backoff_grows_and_is_capped() -> None:
    pol = RetryPolicy(backoff_initial_s=1.0, backoff_max_s=4.0)
    draws = [max(pol.delay(a, f"k{i}") for i in range(50)) for a in range(5)]
    assert draws[0] <= 1.0 and 1.0 < draws[1] <= 2.0 and 2.0 < draws[2] <= 4.0 and draws[4] <= 4.0
    assert pol.delay(0, "k", retry_after=3.0) >= 3.0 and pol.delay(0, "k", retry_after=100) == 4.0


def test_bounded_concurrency_and_order(tmp_path: Path) -> None:
    srv = FakeServer(delay=0.1)
    try:
        active = {"now": 0, "max": 0}
        lock = threading.Lock()
        orig = srv.httpd.RequestHandlerClass.do_POST

        def counting(self: BaseHTTPRequestHandler) -> None:
            with lock:
                active["now"] += 1
                active["max"] = max(active["max"], active["now"])
            try:
                orig(self)
            finally:
                with lock:
                    active["now"] -= 1

        srv.httpd.RequestHandlerClass.do_POST = counting  # type: ignore[method-assign]
        client = make_client(srv, tmp_path / "cache", max_concurrency=3)
        reqs = [ChatRequest(prompt=f"p{i}") for i in range(9)]
        out = client.complete_many(reqs, progress=False)
        assert [r.text for r in out] == [f"echo p{i}" for i in range(9)]
        # really concurrent (requests overlap in the server), never more than the limit; counted, not timed,
        # so a loaded machine cannot fail it
        assert 2 <= active["max"] <= 3
    finally:
        srv.close()


def test_identical_requests_in_a_batch_are_sent_once(server: FakeServer, tmp_path: Path) -> None:
    client = make_client(server, tmp_path / "cache", max_concurrency=4)
    reqs = [ChatRequest(prompt="same", image_png=IMG)] * 5 + [ChatRequest(prompt="other")]
    out = client.complete_many(reqs, progress=False)
    assert [r.text for r in out] == ["echo same"] * 5 + ["echo other"] and server.hits == 2


def test_missing_key_raises_config_error_naming_variable(server: FakeServer, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    client = make_client(server, tmp_path / "cache")  # constructing does not need the key
    with pytest.raises(ConfigError, match=KEY_ENV):
        client.complete_many([ChatRequest(prompt="x")], progress=False)
    assert server.hits == 0


def test_bad_request_is_an_error_result_not_a_crash(server: FakeServer, tmp_path: Path) -> None:
    server.script = ["400"]
    client = make_client(server, tmp_path / "cache")
    out = client.complete_many([ChatRequest(prompt="a"), ChatRequest(prompt="b")], progress=False)
    assert sum(r.error is not None for r in out) == 1 and server.hits == 2


def test_generate_batch_from_config(server: FakeServer, tmp_path: Path) -> None:
    api_cfg = {"endpoints": {"fake": {"base_url": server.base_url, "model": "m", "api_key_env": KEY_ENV}},
               "max_retries": 1, "backoff_initial_s": 0.0, "timeout_s": 2}
    client = client_from_config("fake", api_cfg, cache_dir=tmp_path / "c")
    imgs = [np.full((4, 5), 1000, np.uint16), np.zeros((4, 5, 3), np.uint8)]
    assert generate_batch(client, images=imgs, prompts=["a", "b"], max_tokens=3, progress=False) == [
        "echo a", "echo b"]
    with pytest.raises(ConfigError, match=r"vlm\.api\.endpoints\.nope"):
        client_from_config("nope", api_cfg)


RUNNER = textwrap.dedent("""
    import sys
    from medfm_robust.vlm.api import APIClient, ChatRequest, Endpoint, RetryPolicy
    ep = Endpoint(name="fake", base_url=sys.argv[1], model="fake-model", api_key_env="MEDFM_TEST_API_KEY")
    client = APIClient(ep, cache_dir=sys.argv[2], max_concurrency=1, retry=RetryPolicy(timeout_s=5))
    client.complete_many([ChatRequest(prompt=f"q{i}") for i in range(int(sys.argv[3]))], progress=False)
""")


def test_killed_run_resumes_without_repeating_finished_requests(tmp_path: Path) -> None:
    n = 12
    srv = FakeServer(delay=0.15)
    cache = tmp_path / "cache"
    try:
        env = {**os.environ, KEY_ENV: "k"}
        proc = subprocess.Popen([sys.executable, "-c", RUNNER, srv.base_url, str(cache), str(n)], env=env)
        deadline = time.time() + 60
        while srv.hits < 4 and time.time() < deadline:
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        finished = len(list(cache.rglob("*.json")))
        hits_first = srv.hits
        assert 3 <= finished < n
        client = make_client(srv, cache, max_concurrency=2)
        out = client.complete_many([ChatRequest(prompt=f"q{i}") for i in range(n)], progress=False)
        assert [r.text for r in out] == [f"echo q{i}" for i in range(n)]
        assert srv.hits - hits_first == n - finished  # only the unfinished ones were sent again
        assert sum(r.cached for r in out) == finished
        make_client(srv, cache).complete_many([ChatRequest(prompt=f"q{i}") for i in range(n)], progress=False)
        assert srv.hits - hits_first == n - finished  # a repeated run pays nothing
    finally:
        srv.close()


def test_llm_judge_scores_through_the_cached_client(server: FakeServer, tmp_path: Path) -> None:
    server.script = ["say:1", "say:0.5", "say:Score: 7/10"]
    client = make_client(server, tmp_path / "cache", max_concurrency=1)
    scores = judge_scores(client, "caption", questions=["q"] * 3, references=["CT of the chest."] * 3,
                          predictions=["CT chest", "MRI", "x"], progress=False)
    assert scores == [1.0, 0.5, None] and server.hits == 3
    assert server.bodies[0]["messages"][0]["role"] == "system"
    assert len(server.bodies[0]["messages"][1]["content"]) == 1  # text only, no image
    again = judge_scores(client, "caption", questions=["q"] * 3, references=["CT of the chest."] * 3,
                         predictions=["CT chest", "MRI", "x"], progress=False)
    assert again == scores and server.hits == 3
    assert parse_judge_score("0.75") == 0.75 and parse_judge_score("no") is None
    with pytest.raises(ConfigError, match="grounding"):
        judge_scores(client, "grounding", questions=[], references=[], predictions=[])


def test_judge_is_off_by_default_and_uses_the_configured_endpoint(server: FakeServer, tmp_path: Path) -> None:
    rows = [{"question": "Describe.", "options": [], "reference": "CT of the chest."}]
    api = {"endpoints": {"j": {"base_url": server.base_url, "model": "judge", "api_key_env": KEY_ENV}},
           "backoff_initial_s": 0.0}
    assert maybe_judge("caption", rows, ["CT"], {"judge": {"enabled": False}, "api": api}) is None
    on = {"judge": {"enabled": True, "tasks": ["caption"]}, "api": api}
    assert maybe_judge("vqa", rows, ["CT"], on) is None
    assert server.hits == 0
    server.script = ["say:0.8"]
    cfg = {"judge": {"enabled": True, "tasks": ["caption"], "endpoint": "j"}, "api": api}
    assert maybe_judge("caption", rows, ["CT"], cfg, cache_dir=tmp_path / "c", progress=False) == [0.8]
    assert server.bodies[0]["model"] == "judge"


SECRET = "sk-medfm-SECRET-0123456789abcdef"
ECHO_RUNNER = textwrap.dedent("""
    import logging, sys
    from medfm_robust.logs import setup_logging
    from medfm_robust.vlm.api import client_from_config, generate_batch
    import numpy as np
    setup_logging(sys.argv[3])
    api = {"endpoints": {"fake": {"base_url": sys.argv[1], "model": "m", "api_key_env": "MEDFM_ECHO_KEY"}},
           "max_retries": 1, "backoff_initial_s": 0.0, "backoff_max_s": 0.0, "timeout_s": 5}
    client = client_from_config("fake", api, cache_dir=sys.argv[2])
    img = np.zeros((4, 4), np.uint8)
    for prompt in sys.argv[4:]:
        try:
            print(generate_batch(client, images=[img], prompts=[prompt], progress=False))
        except Exception as exc:
            print("caught:", exc)
            logging.getLogger("runner").exception("failed")
    raise RuntimeError("uncaught after " + repr(client.cache))
""")


@contextlib.contextmanager
def echo_server(status: Callable[[str], int]) -> Iterator[str]:
    """A chat-completions server on 127.0.0.1 that echoes the request headers in every answer and error
    body; ``status(prompt)`` picks each reply's HTTP status. Yields the base URL."""

    class Echo(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            code = status(body["messages"][-1]["content"][0]["text"])
            echo = json.dumps({"headers": dict(self.headers.items()), "raw": str(self.headers)})
            if code == 200:
                obj = {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": echo}}]}
            else:
                obj = {"error": {"message": f"rejected request {echo}", "type": "x"}}
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_api_key_never_reaches_logs_stderr_caches_or_exceptions(tmp_path: Path) -> None:
    """A server that echoes the request headers (in error bodies and in answers) on every status."""
    with echo_server(lambda prompt: int(prompt) if prompt.isdigit() else 200) as url:
        env = {**os.environ, "MEDFM_ECHO_KEY": SECRET}
        log_file = tmp_path / "logs" / "job.log"
        res = subprocess.run(
            [sys.executable, "-c", ECHO_RUNNER, url, str(tmp_path / "cache"), str(log_file),
             "hello", "400", "422", "500", "401"],
            env=env, capture_output=True, text=True, timeout=120,
        )
    assert res.returncode != 0 and "uncaught after" in res.stderr
    log_text = log_file.read_text()
    # every path was taken: an answer, refusals, retries given up, a rejected key
    assert "HTTP 400" in log_text and "HTTP 422" in log_text and "failed after 2 attempts" in res.stdout
    assert "HTTP 401" in res.stdout and "[REDACTED]" in log_text + res.stdout
    outputs = {"stdout": res.stdout, "stderr": res.stderr, "log": log_text}
    outputs |= {str(p): p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert len(outputs) > 3  # the answer was cached
    for name, text in outputs.items():
        assert SECRET not in text, name
        assert "Bearer sk" not in text, name
