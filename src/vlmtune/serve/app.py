"""The FastAPI app: routes, error shaping, and how a chat request flows.

``POST /v1/chat/completions``: schema (422) -> :func:`~vlmtune.serve.prepare.prepare` (400:
roles, limits, images measured then decoded) -> :meth:`Engine.encode` (400 when the prompt has
too many tokens for the server or the context) -> a generation slot
(:class:`~vlmtune.serve.scheduler.Scheduler`) -> a ``chat.completion`` or, with ``stream: true``,
server-sent ``chat.completion.chunk`` events. A client that disconnects while its request waits
for a slot is dropped; one that disconnects while its request generates stops it at the next
token.

Weight changes (off unless ``allow_weight_updates``): ``POST /v1/load_lora_adapter`` and
``/v1/unload_lora_adapter`` with vLLM's bodies, ``POST /update_weights_from_disk`` with SGLang's;
a chat request names an adapter in ``model`` (:mod:`vlmtune.serve.weights`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlmtune.rollout.generator import Completion, SamplingParams
from vlmtune.serve.engine import Engine, PromptError
from vlmtune.serve.errors import APIError, ClientGone, error_body, validation_message
from vlmtune.serve.guard import Guard
from vlmtune.serve.limits import FALLBACK_CONTEXT, Limits, check_prompt_tokens, completion_budget
from vlmtune.serve.prepare import Prepared, prepare
from vlmtune.serve.scheduler import Scheduler
from vlmtune.serve.schema import (
    ChatCompletionRequest,
    LoadLoRAAdapterRequest,
    UnloadLoRAAdapterRequest,
    UpdateWeightsFromDiskRequest,
)
from vlmtune.serve.stats import Stats
from vlmtune.serve.streaming import stream_completion, usage
from vlmtune.serve.weights import ServedWeights, WeightsError

log = logging.getLogger("vlmtune.serve")
T = TypeVar("T")


def create_app(loaded: Any, model_name: str, *, api_key: str | None = None, max_concurrency: int = 1,
               limits: Limits | None = None, allow_weight_updates: bool = False) -> Any:
    """The ASGI app serving ``loaded`` (a :class:`vlmtune.models.loading.Loaded`) as ``model_name``.

    ``max_concurrency`` bounds simultaneous ``generate`` calls (others queue); ``limits`` bounds
    what one request may ask; ``allow_weight_updates`` opens the adapter and weight routes (they
    read folders on the server's disk, so they are off by default). The returned app has the
    FastAPI app as ``.fastapi``, the :class:`Engine` as ``.engine``, the counters as ``.stats``
    and the :class:`ServedWeights` as ``.weights``.
    """
    limits = limits or Limits()
    engine = Engine(loaded, model_name)
    weights = ServedWeights(engine, model_name, started_as_adapter=loaded.is_adapter)
    max_prompt = limits.max_prompt_tokens or engine.context_length or FALLBACK_CONTEXT
    stats = Stats(model_name, max_concurrency, {**limits.model_dump(), "max_prompt_tokens": max_prompt,
                                                "context_length": engine.context_length})
    scheduler = Scheduler(max_concurrency, stats)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        scheduler.close()

    app = FastAPI(title="vlmtune serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    _error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def models() -> dict:
        adapters = [{"id": name, "object": "model", "created": created, "owned_by": "vlmtune", "parent": model_name,
                     "root": weights.paths[name]} for name in weights.adapters]
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "vlmtune"}, *adapters]}

    @app.get("/v1/stats")
    async def get_stats() -> dict:
        return stats.snapshot(weights.adapters)

    async def change_weights(kind: str, change: Callable[[], None]) -> None:
        """Run a weight change off the event loop (it waits for running generations), counted."""
        if not allow_weight_updates:
            raise APIError(403, "weight updates are off on this server; start vlmtune serve with "
                                "--enable-weight-updates", code="weight_updates_disabled")
        try:
            await run_in_threadpool(change)
        except WeightsError as exc:
            stats.weight_change(None)
            log.warning("%s refused: %s", kind, exc.message)
            raise APIError(exc.status, exc.message, code=exc.code) from None
        stats.weight_change(kind)

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(req: LoadLoRAAdapterRequest) -> Any:
        await change_weights("adapter_load", lambda: weights.load_adapter(req.lora_name, req.lora_path,
                                                                          req.load_inplace))
        log.info("loaded LoRA adapter %r from %s", req.lora_name, req.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(req: UnloadLoRAAdapterRequest) -> Any:
        await change_weights("adapter_unload", lambda: weights.unload_adapter(req.lora_name))
        log.info("unloaded LoRA adapter %r", req.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(req: UpdateWeightsFromDiskRequest) -> dict:
        await change_weights("weight_reload", lambda: weights.reload_weights(req.model_path))
        log.info("reloaded the weights of %r from %s", model_name, req.model_path)
        return {"success": True, "message": f"weights of '{model_name}' loaded from {req.model_path}",
                "num_paused_requests": 0}

    async def admit(req: ChatCompletionRequest) -> tuple[Prepared, dict[str, Any], SamplingParams, int]:
        """Everything that can be refused is refused here, before the request takes a slot."""
        # Image decoding and tokenising are CPU work: off the event loop, outside the slots.
        prep = await run_in_threadpool(prepare, req, limits, is_vlm=engine.is_vlm, model_name=model_name,
                                       max_prompt_tokens=max_prompt, max_token_chars=engine.max_token_chars)
        try:
            inputs = await run_in_threadpool(engine.encode, prep.messages, prep.images)
        except PromptError as exc:
            raise APIError(400, str(exc), code="template_error") from None
        prompt_tokens = int(inputs["input_ids"].shape[1])
        check_prompt_tokens(prompt_tokens, max_prompt)
        max_new = completion_budget(prompt_tokens, prep.requested_max_tokens, prep.sampling.max_new_tokens,
                                    engine.context_length)
        return prep, inputs, dataclasses.replace(prep.sampling, max_new_tokens=max_new), prompt_tokens

    def generation(served: str, inputs: dict[str, Any], sampling: SamplingParams,
                   on_text: Callable[[str], None] | None = None, logprobs: bool = False
                   ) -> Awaitable[list[Completion]]:
        def job(cancel: Any) -> list[Completion]:
            with weights.using(served):
                return engine.generate(inputs, sampling, cancel=cancel, on_text=on_text, logprobs=logprobs)

        return scheduler.run(job)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        t0 = time.perf_counter()
        try:
            served = weights.route(req.model)
        except WeightsError as exc:
            raise APIError(exc.status, exc.message, param="model", code=exc.code) from None
        prep, inputs, sampling, prompt_tokens = await admit(req)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served}

        def done(choices: list[Completion]) -> None:
            completion_tokens = sum(ch.tokens for ch in choices)
            stats.tokens(prompt_tokens, completion_tokens)
            stats.served(served)
            log.info("chat.completion%s: %d prompt + %d completion tokens, n=%d, %.2fs",
                     " (stream)" if prep.stream else "", prompt_tokens, completion_tokens, sampling.n,
                     time.perf_counter() - t0)

        if prep.stream:
            events = stream_completion(
                head, sampling.stop, prompt_tokens, prep.include_usage,
                lambda on_text: unless_disconnected(request, generation(served, inputs, sampling, on_text)),
                lambda choice: done([choice]))
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            choices = await unless_disconnected(request, generation(served, inputs, sampling,
                                                                    logprobs=prep.logprobs))
        except ClientGone:
            log.info("client disconnected; its request was dropped or stopped")
            return Response(status_code=499)  # nginx's "client closed request": nobody reads it
        except APIError:
            raise
        except Exception as exc:
            log.exception("generation failed")
            raise APIError(500, f"generation failed: {type(exc).__name__}", type_="server_error") from None
        done(choices)
        return {**head, "object": "chat.completion",
                "choices": [{"index": i, "message": {"role": "assistant", "content": ch.text},
                             "logprobs": {"content": engine.logprobs_content(ch, prep.tokens_as_ids)}
                             if prep.logprobs else None, "finish_reason": ch.finish_reason}
                            for i, ch in enumerate(choices)],
                "usage": usage(prompt_tokens, sum(ch.tokens for ch in choices)),
                "system_fingerprint": None}

    guarded = Guard(app, stats, api_key, limits.max_body_bytes)
    guarded.fastapi = app  # type: ignore[attr-defined]
    guarded.engine = engine  # type: ignore[attr-defined]
    guarded.stats = stats  # type: ignore[attr-defined]
    guarded.weights = weights  # type: ignore[attr-defined]
    return guarded


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first: then cancel it and raise ClientGone."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    watch.add_done_callback(lambda w: None if w.cancelled() else task.cancel())
    try:
        return await task
    except asyncio.CancelledError:
        if watch.done() and not watch.cancelled():
            raise ClientGone() from None
        raise
    finally:
        watch.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was already read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _error_handlers(app: FastAPI) -> None:
    """Every error body in OpenAI's shape; malformed bodies are 422 naming the field."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(list(exc.errors()))
        return JSONResponse(error_body(message, "invalid_request_error", param, "invalid_request"),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))
