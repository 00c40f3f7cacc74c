"""``vlmtune serve``: an OpenAI-compatible chat-completions server over one loaded model.

One model (a VLM through its processor, or a text-only causal LM through its tokenizer's chat
template; full model, PEFT adapter or GGUF file) behind:

- ``GET  /health``                 liveness, no authentication;
- ``GET  /v1/models``              the one served model;
- ``POST /v1/chat/completions``    the OpenAI request/response schema, ``stream: true`` included;
- ``GET  /v1/stats``               counters: requests, responses by status, generation load, limits;
- ``POST /v1/load_lora_adapter``, ``/v1/unload_lora_adapter``, ``/update_weights_from_disk``:
  the served weights changed at run time (off unless asked for).

The package, by concern (docs/serving.md is the user's guide):

- :mod:`~vlmtune.serve.schema`: the request as clients send it (malformed -> 422);
- :mod:`~vlmtune.serve.errors`: OpenAI-shaped error bodies;
- :mod:`~vlmtune.serve.limits`: every bound (body, prompt tokens, images, pixels, seed) and its check;
- :mod:`~vlmtune.serve.prepare`: a request's meaning -> canonical messages + images (400);
- :mod:`~vlmtune.serve.engine`: generation with the model, no HTTP (encode, generate, cancel, stream);
- :mod:`~vlmtune.serve.scheduler`: generation slots, the queue, dropping work of departed clients;
- :mod:`~vlmtune.serve.weights`: adapters and full weights changed at run time, routing by ``model``;
- :mod:`~vlmtune.serve.streaming`: server-sent ``chat.completion.chunk`` events;
- :mod:`~vlmtune.serve.guard`: the outer ASGI layer (auth, body bytes, query strings, counting);
- :mod:`~vlmtune.serve.app`: the FastAPI routes; :mod:`~vlmtune.serve.cli`: the verb.
"""

from __future__ import annotations

from typing import Any

from vlmtune.serve.cli import add_serve_args, cmd_serve, default_model_name, main, serve
from vlmtune.serve.limits import Limits

__all__ = ["Limits", "add_serve_args", "cmd_serve", "create_app", "default_model_name", "main", "serve"]


def __getattr__(name: str) -> Any:
    # The app pulls in torch, transformers and FastAPI: only when asked for.
    if name == "create_app":
        from vlmtune.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'vlmtune.serve' has no attribute {name!r}")
