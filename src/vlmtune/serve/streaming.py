"""Server-sent events for ``stream: true``, in the shape OpenAI clients parse.

The stream is ``data: {chat.completion.chunk}`` events: the first carries the assistant role,
then text deltas, then an empty delta with the ``finish_reason``; with
``stream_options.include_usage`` a last chunk with no choices carries ``usage``; ``data: [DONE]``
ends it. An error after the stream has begun is sent as ``data: {"error": {...}}`` (OpenAI's
own clients raise it) and the stream ends without ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from vlmtune.rollout.generator import Completion
from vlmtune.serve.errors import APIError, ClientGone, error_body

log = logging.getLogger("vlmtune.serve")
DONE = b"data: [DONE]\n\n"


class StopHoldback:
    """Turns growing text into deltas that never show a stop string, nor a piece of one.

    A tail that could be the start of a stop string is held back until the next text decides
    it; once a stop string appears, the text before it is released and nothing after.
    """

    def __init__(self, stop: Sequence[str]):
        self.stop = [s for s in stop if s]
        self.text = ""
        self.sent = 0  # characters of ``text`` released so far
        self.stopped = False

    def push(self, delta: str) -> str:
        if self.stopped:
            return ""
        self.text += delta
        cuts = [i for s in self.stop if (i := self.text.find(s)) >= 0]
        if cuts:
            self.stopped = True
            return self._release(min(cuts))
        return self._release(len(self.text) - self._held())

    def _held(self) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        for k in range(min(len(self.text), max((len(s) for s in self.stop), default=1) - 1), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0

    def _release(self, end: int) -> str:
        out = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return out


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def chunk(head: dict, delta: dict, finish_reason: str | None = None) -> dict:
    """A ``chat.completion.chunk`` with one choice; ``head`` holds id, created and model."""
    return {**head, "object": "chat.completion.chunk", "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def stream_completion(head: dict, stop: Sequence[str], prompt_tokens: int, include_usage: bool,
                            start: Callable[[Callable[[str], None]], Awaitable[list[Completion]]],
                            on_done: Callable[[Completion], None]) -> AsyncIterator[bytes]:
    """SSE bytes for one completion. ``start(on_text)`` is the generation (run as a task here,
    cancelled when this iterator is closed early); ``on_text`` may be called from any thread."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    work = asyncio.ensure_future(start(lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)))
    work.add_done_callback(lambda _: pieces.put_nowait(None))  # after every piece already sent
    holdback = StopHoldback(stop)
    sent = ""
    try:
        yield sse(chunk(head, {"role": "assistant", "content": ""}))
        while (text := await pieces.get()) is not None:
            if out := holdback.push(text):
                sent += out
                yield sse(chunk(head, {"content": out}))
        if work.cancelled() or isinstance(work.exception(), ClientGone):
            return  # the client went away: nobody is listening
        (choice,) = work.result()
        # The final text is decoded from all tokens at once; release whatever the incremental
        # decoding had not (e.g. a held-back tail that turned out not to be a stop string).
        if choice.text.startswith(sent) and len(choice.text) > len(sent):
            yield sse(chunk(head, {"content": choice.text[len(sent):]}))
        elif not choice.text.startswith(sent):
            log.warning("streamed text differs from the final decoding; the stream keeps what it sent")
        on_done(choice)
        yield sse(chunk(head, {}, choice.finish_reason))
        if include_usage:
            yield sse({**head, "object": "chat.completion.chunk", "system_fingerprint": None, "choices": [],
                       "usage": usage(prompt_tokens, choice.tokens)})
        yield DONE
    except APIError as exc:
        yield sse(exc.body())
    except Exception as exc:
        log.exception("generation failed during a stream")
        yield sse(error_body(f"generation failed: {type(exc).__name__}", "server_error"))
    finally:
        work.cancel()  # closed early (client gone): stop the generation
        if work.done() and not work.cancelled():
            work.exception()  # seen: a client that left is no error to report
