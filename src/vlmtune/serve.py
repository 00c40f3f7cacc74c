"""``vlmtune serve MODEL_DIR``: an OpenAI-compatible chat-completions server.

One loaded model (a VLM through its processor, or a text-only causal LM through its
tokenizer's chat template; full model, PEFT adapter or GGUF file) behind:

- ``GET  /health``                 liveness, no authentication;
- ``GET  /v1/models``              the one served model;
- ``POST /v1/chat/completions``    the OpenAI request/response schema (no streaming);
- ``GET  /v1/stats``               counters: requests, responses by status, generation load.

Safety and robustness:

- binds ``127.0.0.1`` by default; an optional API key (``Authorization: Bearer KEY``) guards
  every ``/v1/`` route, compared in constant time and never logged or echoed;
- images only as inline ``data:image/...;base64,`` URIs: the server never fetches a URL or
  reads a local file on a client's behalf;
- malformed bodies -> 422 naming the field; bad but well-formed requests (empty messages,
  unsupported role, undecodable image, image for a text-only model) -> 400; every error body
  is ``{"error": {"message", "type", "param", "code"}}`` as OpenAI clients expect;
- generation runs in worker threads, at most ``max_concurrency`` ``generate`` calls at once;
  further requests queue (they are never refused for being busy);
- temperature 0 is greedy decoding, deterministic for a given prompt, so a judge is stable.
  A ``seed`` makes sampling reproducible: sampled requests take the global torch RNG in
  turn (greedy ones need no RNG and run concurrently).

``create_app`` builds the FastAPI app around an already loaded model (tests, embedding);
``serve`` loads a model directory and runs uvicorn; ``add_serve_args``/``cmd_serve`` are the
CLI verb (also ``python -m vlmtune.serve``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import hmac
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("vlmtune.serve")  # the same name under python -m

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_BODY_BYTES = 32 * 1024 * 1024
_PATHS = ("/health", "/v1/models", "/v1/chat/completions", "/v1/stats")


# --------------------------------------------------------------------------- request schema


class _Lenient(BaseModel):
    # OpenAI clients send fields we do not use (user, presence_penalty, ...): ignore them.
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImageURL(_Lenient):
    url: str
    detail: str | None = None


class ImageURLPart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImageURLPart, Field(discriminator="type")]


class ChatMessage(_Lenient):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_Lenient):
    model: str | None = Field(None, description="Accepted and echoed; the one loaded model answers.")
    messages: list[ChatMessage]
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    logprobs: bool | None = False
    tools: list[Any] | None = None


# --------------------------------------------------------------------------- errors


class APIError(Exception):
    """An error the client should see: HTTP status plus an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code


def _error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_BRANCH_LABELS = {"str", "int", "float", "bool", "none", "list", "dict"}


def _clean_loc(loc: tuple) -> tuple[list[str], bool]:
    """Field path without "body", union branch labels ("str", "list[...]") and repeated
    discriminator tags; also whether a union branch label was present."""
    out: list[str] = []
    branch = False
    for x in loc:
        x = str(x)
        if x == "body":
            continue
        if x in _BRANCH_LABELS or "[" in x:
            branch = True
            continue
        if out and out[-1] == x:  # tagged union: ...content.0.image_url.image_url.url
            continue
        out.append(x)
    return out, branch


def _validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """A readable one-line summary of pydantic errors: ``field.path: problem; ...``."""
    cleaned = [(*_clean_loc(tuple(e.get("loc", ()))), e) for e in errors]
    # A union (string content OR list of parts) reports every branch; when the client clearly
    # went for one branch (a deeper error exists), the other branch's type error is noise.
    kept = [(loc, err) for loc, branch, err in cleaned
            if not (branch and str(err.get("type", "")).endswith("_type")
                    and any(len(o) > len(loc) and o[:len(loc)] == loc for o, _, _ in cleaned))]
    parts, first = [], None
    for loc, err in kept[:5]:
        if err.get("type") == "json_invalid":
            parts.append(f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
            continue
        if not loc and err.get("type") in ("model_attributes_type", "dict_type", "missing"):
            parts.append("the request body must be a JSON object (Content-Type: application/json)")
            continue
        where = ".".join(loc) or "body"
        first = first or where
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = f" (+{len(kept) - 5} more)" if len(kept) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more, first


# --------------------------------------------------------------------------- preparation


@dataclass
class Prepared:
    """A validated request: messages in the model's format, decoded images, sampling."""

    messages: list[dict]
    images: list[Any]
    max_new_tokens: int
    temperature: float
    top_p: float
    n: int
    stop: list[str]
    seed: int | None


def _decode_data_uri(url: str, where: str):
    from vlmtune.data.sample import BadSample, load_image

    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https", "ftp", "file", "s3", "gs"):
        raise APIError(400, f"{where}: {scheme}:// image URLs are not fetched by this server; send the "
                            "image inline as a data:image/...;base64,... URI", param=where,
                       code="image_url_not_supported")
    if scheme != "data":
        raise APIError(400, f"{where}: the image URL must be a data:image/...;base64,... URI", param=where,
                       code="image_url_not_supported")
    header, sep, payload = url.partition(",")
    if not sep or not header.lower().endswith(";base64"):
        raise APIError(400, f"{where}: the data URI is not base64-encoded (expected data:image/png;base64,...)",
                       param=where, code="invalid_image")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, f"{where}: invalid base64 in the data URI ({exc})", param=where,
                       code="invalid_image") from None
    if not data:
        raise APIError(400, f"{where}: the data URI holds no bytes", param=where, code="invalid_image")
    try:
        return load_image(data)
    except BadSample as exc:
        raise APIError(400, f"{where}: the image cannot be decoded ({exc.detail})", param=where,
                       code="invalid_image") from None


def prepare(req: ChatCompletionRequest, *, is_vlm: bool, model_name: str, max_new_tokens_limit: int,
            default_max_tokens: int) -> Prepared:
    """Check a request's meaning and turn it into messages + images, or raise APIError(400)."""
    if req.stream:
        raise APIError(400, "stream=true is not supported by this server; send stream=false",
                       param="stream")
    if req.logprobs:
        raise APIError(400, "logprobs are not supported by this server", param="logprobs")
    if req.tools:
        raise APIError(400, "tools are not supported by this server", param="tools")
    if not req.messages:
        raise APIError(400, "messages must contain at least one message", param="messages")
    max_new = req.max_completion_tokens or req.max_tokens or min(default_max_tokens, max_new_tokens_limit)
    if max_new > max_new_tokens_limit:
        raise APIError(400, f"max_tokens={max_new} exceeds this server's limit of {max_new_tokens_limit}",
                       param="max_tokens")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise APIError(400, "stop must be up to 4 non-empty strings", param="stop")

    messages: list[dict] = []
    images: list[Any] = []
    for i, msg in enumerate(req.messages):
        role = ROLES.get(msg.role)
        if role is None:
            raise APIError(400, f"messages[{i}].role {msg.role!r} is not supported (use system, user or "
                                "assistant)", param=f"messages[{i}].role")
        if role == "system" and i != 0:
            raise APIError(400, f"messages[{i}]: a system message may only come first",
                           param=f"messages[{i}].role")
        parts = [TextPart(type="text", text=msg.content)] if isinstance(msg.content, str) \
            else list(msg.content or [])
        if not parts or all(isinstance(p, TextPart) and not p.text for p in parts):
            raise APIError(400, f"messages[{i}].content is empty", param=f"messages[{i}].content")
        content: list[dict] = []
        for j, part in enumerate(parts):
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
                continue
            where = f"messages[{i}].content[{j}].image_url"
            if not is_vlm:
                raise APIError(400, f"{where}: model {model_name!r} is a text-only language model and "
                                    "cannot take images", param=where, code="images_not_supported")
            if role != "user":
                raise APIError(400, f"{where}: images are only accepted in user messages", param=where)
            images.append(_decode_data_uri(part.image_url.url, where))
            content.append({"type": "image"})
        if is_vlm:
            messages.append({"role": role, "content": content})
        else:  # text-only chat templates expect string content
            messages.append({"role": role, "content": "\n".join(p["text"] for p in content)})
    if messages[-1]["role"] != "user":
        raise APIError(400, f"the last message must be from the user (got {messages[-1]['role']!r})",
                       param=f"messages[{len(messages) - 1}].role")
    return Prepared(messages, images, max_new, req.temperature, req.top_p, req.n, stop, req.seed)


# --------------------------------------------------------------------------- engine


@dataclass
class Choice:
    text: str
    finish_reason: str  # "stop" | "length"
    tokens: int


@dataclass
class Counters:
    started: float = field(default_factory=time.time)
    requests_total: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    chat_received: int = 0
    chat_ok: int = 0
    chat_client_errors: int = 0
    chat_server_errors: int = 0
    generate_calls: int = 0
    in_flight: int = 0
    queued: int = 0
    max_queued: int = 0
    max_in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Engine:
    """The loaded model plus the locks that make it safe to call from worker threads."""

    def __init__(self, loaded: Any, model_name: str, max_concurrency: int):
        import torch

        self.loaded, self.model_name = loaded, model_name
        self.model, self.processor, self.tokenizer = loaded.model, loaded.processor, loaded.tokenizer
        self.is_vlm = loaded.family is not None
        self.max_concurrency = max_concurrency
        self.executor = concurrent.futures.ThreadPoolExecutor(max_concurrency, thread_name_prefix="vlmtune-gen")
        self.slots = asyncio.Semaphore(max_concurrency)  # waiting happens here, in the event loop
        self.rng_lock = threading.Lock()  # sampled requests use the global torch RNG in turn
        self.tok_lock = threading.Lock()  # fast tokenizers are not safe to share across threads
        self.lock = threading.Lock()  # counters
        self.counters = Counters()
        self.device = next(self.model.parameters()).device
        self.end_ids = self._end_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.end_ids)
        self._torch = torch
        if not getattr(self.processor, "chat_template", None) and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"model {model_name!r} has no chat template; /v1/chat/completions needs one")

    def _end_ids(self) -> set[int]:
        ids: set[int] = set()
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        if not ids:
            raise ValueError(f"model {self.model_name!r} defines no end-of-sequence token")
        return ids

    def _inputs(self, prep: Prepared) -> dict[str, Any]:
        if self.is_vlm:
            from vlmtune.batching.render import render_prompt
            from vlmtune.data.sample import Sample

            return render_prompt(Sample(messages=prep.messages, images=prep.images), self.processor)
        text = self.tokenizer.apply_chat_template(prep.messages, tokenize=False, add_generation_prompt=True)
        return dict(self.tokenizer(text, add_special_tokens=False, return_tensors="pt"))

    async def run(self, prep: Prepared) -> tuple[list[Choice], int]:
        """Generate in a worker thread once a slot is free; until then the request waits in the
        queue (it is never refused for being busy)."""
        with self.lock:
            self.counters.queued += 1
            if self.slots.locked():  # no free slot: this request really waits
                self.counters.max_queued = max(self.counters.max_queued, self.counters.queued)
        waiting = True
        try:
            async with self.slots:
                with self.lock:
                    self.counters.queued -= 1
                waiting = False
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.executor, self.generate, prep)
        finally:
            if waiting:  # cancelled while queued
                with self.lock:
                    self.counters.queued -= 1

    def generate(self, prep: Prepared) -> tuple[list[Choice], int]:
        """Runs in one of the ``max_concurrency`` worker threads (the executor is the hard bound)."""
        with self.lock:
            c = self.counters
            c.in_flight += 1
            c.generate_calls += 1
            c.max_in_flight = max(c.max_in_flight, c.in_flight)
        try:
            return self._generate(prep)
        finally:
            with self.lock:
                self.counters.in_flight -= 1

    def _generate(self, prep: Prepared) -> tuple[list[Choice], int]:
        torch = self._torch
        with self.tok_lock:
            try:
                enc = self._inputs(prep)
            except Exception as exc:  # jinja TemplateError, processor complaints
                raise APIError(400, f"the model's chat template or processor rejected the conversation: "
                                    f"{type(exc).__name__}: {exc}", code="template_error") from None
        inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in enc.items()}
        prompt_len = int(inputs["input_ids"].shape[1])
        sampling: dict[str, Any] = {"do_sample": False}
        if prep.temperature > 0:
            sampling = {"do_sample": True, "temperature": prep.temperature, "top_p": prep.top_p}
        # Greedy decoding gives n identical answers: decode once, repeat it.
        n_gen = prep.n if sampling["do_sample"] else 1
        kwargs: dict[str, Any] = dict(max_new_tokens=prep.max_new_tokens, num_return_sequences=n_gen,
                                      pad_token_id=self.pad_id, eos_token_id=sorted(self.end_ids), **sampling)
        if prep.stop:  # (transformers' stop_strings precomputes over the whole vocabulary: slow)
            kwargs["stopping_criteria"] = self._stop_criteria(prep.stop, prompt_len)
        if not sampling["do_sample"]:  # greedy: deterministic, no RNG involved
            kwargs.update(top_k=None, top_p=None, temperature=None)
        with torch.inference_mode():
            if sampling["do_sample"]:
                with self.rng_lock:
                    if prep.seed is not None:
                        torch.manual_seed(prep.seed)
                    seqs = self.model.generate(**inputs, **kwargs)
            else:
                seqs = self.model.generate(**inputs, **kwargs)
        rows = seqs[:, prompt_len:].cpu().tolist()
        with self.tok_lock:
            choices = [self._choice(row, prep.stop) for row in rows]
        if len(choices) < prep.n:
            choices = [Choice(choices[0].text, choices[0].finish_reason, choices[0].tokens)
                       for _ in range(prep.n)]
        return choices, prompt_len

    def _stop_criteria(self, stop: list[str], prompt_len: int) -> Any:
        """Stop a row once its decoded tail contains a stop string."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        window = max(len(s) for s in stop) + 8  # tokens: enough to cover any stop string
        engine = self

        class StopOnText(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
                done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                start = max(prompt_len, input_ids.shape[1] - window)
                with engine.tok_lock:
                    for i, row in enumerate(input_ids[:, start:].tolist()):
                        tail = engine.tokenizer.decode(row, skip_special_tokens=True)
                        done[i] = any(s in tail for s in stop)
                return done

        return StoppingCriteriaList([StopOnText()])

    def _choice(self, row: list[int], stop: list[str]) -> Choice:
        end = next((k for k, t in enumerate(row) if t in self.end_ids), None)
        if end is not None:
            body, n_tokens, reason = row[:end], end + 1, "stop"
        else:
            body = row
            while body and body[-1] == self.pad_id:  # a row stopped by a stop string is padded
                body = body[:-1]
            n_tokens, reason = len(body), "length"
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        cuts = [text.find(s) for s in stop if s in text]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        return Choice(text, reason, n_tokens)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            c = self.counters
            return {
                "model": self.model_name,
                "uptime_s": round(time.time() - c.started, 3),
                "requests_total": c.requests_total,
                "requests_by_path": dict(c.by_path),
                "responses_by_status": dict(c.by_status),
                "chat_completions": {"received": c.chat_received, "ok": c.chat_ok,
                                     "client_errors": c.chat_client_errors,
                                     "server_errors": c.chat_server_errors},
                "generation": {"calls": c.generate_calls, "in_flight": c.in_flight, "queued": c.queued,
                               "max_queued": c.max_queued,
                               "max_in_flight": c.max_in_flight, "max_concurrency": self.max_concurrency,
                               "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens},
            }


# --------------------------------------------------------------------------- ASGI guard


class _Guard:
    """Outermost ASGI layer: counts every request and its status, enforces the body size limit
    and checks the API key on ``/v1/`` before anything reads the body."""

    def __init__(self, app: Any, engine: Engine, api_key: str | None, max_body_bytes: int):
        self.app, self.engine, self.max_body_bytes = app, engine, max_body_bytes
        self._key = api_key.encode() if api_key else None

    async def _reply(self, send: Any, status: int, body: dict, headers: list | None = None) -> None:
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode()), *(headers or [])]})
        await send({"type": "http.response.body", "body": data})

    def _authorized(self, headers: dict[bytes, bytes]) -> str | None:
        """None when allowed, else the 401 message (which never contains what was sent)."""
        if self._key is None:
            return None
        auth = headers.get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if not auth or scheme.lower() != b"bearer" or not token.strip():
            return "missing API key: send the header 'Authorization: Bearer <key>'"
        if not hmac.compare_digest(token.strip(), self._key):
            return "invalid API key"
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        is_chat = path.rstrip("/") == "/v1/chat/completions"
        eng = self.engine
        with eng.lock:
            c = eng.counters
            c.requests_total += 1
            known = path.rstrip("/") if path.rstrip("/") in _PATHS else "other"  # bounded keys
            c.by_path[known] = c.by_path.get(known, 0) + 1
            if is_chat:
                c.chat_received += 1

        def record(status: int) -> None:
            with eng.lock:
                c.by_status[str(status)] = c.by_status.get(str(status), 0) + 1
                if is_chat:
                    if status < 300:
                        c.chat_ok += 1
                    elif status < 500:
                        c.chat_client_errors += 1
                    else:
                        c.chat_server_errors += 1

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                record(message["status"])
            await send(message)

        headers = dict(scope.get("headers") or [])
        if path.startswith("/v1/") or path == "/v1":
            problem = self._authorized(headers)
            if problem is not None:
                await self._reply(counting_send, 401, _error_body(problem, "authentication_error",
                                                                  code="invalid_api_key"),
                                  [(b"www-authenticate", b"Bearer")])
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._reply(counting_send, 413, _error_body(
                f"request body of {int(length)} bytes exceeds the limit of {self.max_body_bytes} bytes",
                "invalid_request_error", code="request_too_large"))
            return
        await self.app(scope, receive, counting_send)


# --------------------------------------------------------------------------- app


def create_app(loaded: Any, model_name: str, api_key: str | None = None, max_concurrency: int = 1,
               max_new_tokens_limit: int = 1024, *, default_max_tokens: int = 256,
               max_body_bytes: int = MAX_BODY_BYTES) -> Any:
    """The FastAPI app serving ``loaded`` (a :class:`vlmtune.models.loading.Loaded`) as ``model_name``.

    ``max_concurrency`` bounds simultaneous ``generate`` calls (others queue);
    ``max_new_tokens_limit`` caps ``max_tokens`` (more -> 400); ``default_max_tokens`` applies
    when a request gives none. The returned ASGI app has the FastAPI app as ``.fastapi`` and the
    :class:`Engine` as ``.engine``.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if max_concurrency < 1:
        raise ValueError("max_concurrency must be >= 1")
    if max_new_tokens_limit < 1:
        raise ValueError("max_new_tokens_limit must be >= 1")
    engine = Engine(loaded, model_name, max_concurrency)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="vlmtune serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(_error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(list(exc.errors()))
        return JSONResponse(_error_body(message, "invalid_request_error", param, "invalid_request"),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(_error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "vlmtune"}]}

    @app.get("/v1/stats")
    async def stats() -> dict:
        return engine.stats()

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest) -> dict:
        t0 = time.perf_counter()
        # Image decoding is CPU work: off the event loop, but not in the generation slots.
        from starlette.concurrency import run_in_threadpool

        prep = await run_in_threadpool(prepare, req, is_vlm=engine.is_vlm, model_name=model_name,
                                       max_new_tokens_limit=max_new_tokens_limit,
                                       default_max_tokens=default_max_tokens)
        try:
            choices, prompt_tokens = await engine.run(prep)
        except APIError:
            raise
        except Exception as exc:
            log.exception("generation failed")
            raise APIError(500, f"generation failed: {type(exc).__name__}", type_="server_error") from None
        completion_tokens = sum(ch.tokens for ch in choices)
        with engine.lock:
            engine.counters.prompt_tokens += prompt_tokens
            engine.counters.completion_tokens += completion_tokens
        log.info("chat.completion: %d prompt + %d completion tokens, n=%d, %.2fs", prompt_tokens,
                 completion_tokens, prep.n, time.perf_counter() - t0)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": ch.text},
                         "logprobs": None, "finish_reason": ch.finish_reason}
                        for i, ch in enumerate(choices)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "system_fingerprint": None,
        }

    guarded = _Guard(app, engine, api_key, max_body_bytes)
    guarded.fastapi = app  # type: ignore[attr-defined]
    guarded.engine = engine  # type: ignore[attr-defined]
    return guarded


# --------------------------------------------------------------------------- running


def default_model_name(model_dir: str | Path, gguf_file: str | None = None) -> str:
    if gguf_file:
        return Path(gguf_file).name.removesuffix(".gguf")
    return Path(model_dir).resolve().name


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          base_model: str | None = None, gguf_file: str | None = None, *, model_name: str | None = None,
          dtype: str = "float32", trust_remote_code: bool = False, max_concurrency: int = 1,
          max_new_tokens_limit: int = 1024, default_max_tokens: int = 256, threads: int | None = None,
          log_level: str = "info") -> None:
    """Load ``model_dir`` (full model, PEFT adapter or GGUF file inside it) and serve it until stopped.

    ``threads`` sets torch's intra-op threads for the process (on a busy CPU, 1 thread per
    concurrent generation avoids oversubscription, which can slow decoding down tenfold)."""
    import uvicorn

    from vlmtune.models.loading import load_for_inference

    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    loaded = load_for_inference(model_dir, base_model, dtype=dtype, gguf_file=gguf_file,
                                trust_remote_code=trust_remote_code)
    name = model_name or default_model_name(model_dir, gguf_file)
    app = create_app(loaded, name, api_key=api_key, max_concurrency=max_concurrency,
                     max_new_tokens_limit=max_new_tokens_limit, default_max_tokens=default_max_tokens)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model",
                    host)
    kind = "vision-language model" if loaded.family is not None else "text-only language model"
    print(f"vlmtune serve: {name} ({kind}) on http://{host}:{port}/v1 "
          f"(API key: {'required' if api_key else 'none'}; max concurrency {max_concurrency})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="model directory (transformers model, PEFT adapter, or folder holding "
                                     "--gguf-file)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-env", metavar="VAR",
                   help="require 'Authorization: Bearer KEY', KEY read from this environment variable "
                        "(preferred over --api-key, which other users can see in the process list)")
    p.add_argument("--api-key", help="require this bearer key (see --api-key-env)")
    p.add_argument("--model-name", help="model id reported by /v1/models (default: the directory or "
                                        "GGUF file name)")
    p.add_argument("--base-model", help="base model directory for a PEFT adapter without one recorded")
    p.add_argument("--gguf-file", help="GGUF file name inside MODEL_DIR")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--max-concurrency", type=int, default=1,
                   help="generate calls run at once; further requests queue (default 1: right for CPU)")
    p.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask")
    p.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request gives none")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; on a shared or "
                                               "busy CPU, cores / max-concurrency is often much faster)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def cmd_serve(args: argparse.Namespace) -> int:
    api_key = args.api_key
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env, "")
        if not api_key:
            raise SystemExit(f"vlmtune serve: --api-key-env names {args.api_key_env!r} but that environment "
                             "variable is not set or empty")
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.model_dir, host=args.host, port=args.port, api_key=api_key, base_model=args.base_model,
          gguf_file=args.gguf_file, model_name=args.model_name, dtype=args.dtype,
          trust_remote_code=args.trust_remote_code, max_concurrency=args.max_concurrency,
          max_new_tokens_limit=args.max_tokens_limit, default_max_tokens=args.default_max_tokens,
          threads=args.threads, log_level=args.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlmtune serve",
                                     description="serve a model over an OpenAI-compatible HTTP API")
    add_serve_args(parser)
    args = parser.parse_args(argv)
    from vlmtune.models.loading import ModelLoadError

    try:
        return cmd_serve(args)
    except ModelLoadError as exc:
        print(f"vlmtune serve: error: {exc}", flush=True)
        return 2


if __name__ == "__main__":
    import sys

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
