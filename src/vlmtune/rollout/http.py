"""The ``http`` generation backend: prompts go to OpenAI-compatible servers (vLLM, ``vlmtune
serve``), completions come back with their sampled token ids and log-probabilities, and the
trainer's weights go to the servers after every policy update.

    generation:
      backend: http
      batch_size: 8                  # requests in flight at once
      options:
        base_urls: [http://gpu7:8001/v1, http://gpu7:8002/v1]
        sync_dir: /shared/run/policy # a folder the servers can read (default: a local temp dir)

Each prompt is one chat-completions request (its images as ``data:`` URIs, ``n`` = the group
size, ``logprobs`` with vLLM's ``return_tokens_as_token_ids``, so the ids are exactly what was
sampled, never the text tokenised again). Requests are spread round-robin over ``base_urls``;
a request that fails (no connection, a timeout, 5xx or 429) is retried on the next server
after a doubling backoff, and after ``retries`` retries the run stops with
:class:`GenerationServerError`, one line naming the server and the cause. A 4xx is the
request's own fault and stops at once with the server's message.

Weight sync (:meth:`HTTPGenerator.sync_weights`, which GRPO calls before its first step and
after each update): a LoRA policy is saved as an adapter to ``sync_dir/step-N`` and loaded on
every server with ``POST /v1/load_lora_adapter`` (``load_inplace``, under ``adapter_name``);
requests then name the adapter in ``model``. A fully trained policy is saved whole and
reloaded with ``POST /update_weights_from_disk`` (``vlmtune serve``, SGLang; vLLM syncs full
weights over NCCL instead, docs/scaling.md). With several training processes the main one
syncs and the others wait for it.

The trainer never trusts the servers' log-probabilities for the loss: it recomputes them and
logs the ratio to the servers' as ``sampling_ratio_*`` (:func:`vlmtune.train.losses.sampling_ratio_stats`).

Light at import (the CLI names :class:`GenerationServerError` before any command runs).
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlmtune.rollout.generator import Completion, SamplingParams

RETRY_STATUS = {429, 500, 502, 503, 504}


class GenerationServerError(RuntimeError):
    """A generation server that did not answer after the retries, or refused a request."""


def data_uri(image: Any) -> str:
    """A decoded image as an inline PNG ``data:`` URI (servers never fetch files or URLs)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_messages(sample: Any, system_prompt: str | None) -> list[dict[str, Any]]:
    """A sample's prompt in the chat-completions shape: its turns without a trailing reference
    answer, the system prompt first when it has none, images in placeholder order as URIs."""
    images = iter(sample.load_images())
    turns = list(sample.messages)
    if turns and turns[-1]["role"] == "assistant":
        turns = turns[:-1]
    if system_prompt and (not turns or turns[0]["role"] != "system"):
        turns = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}, *turns]
    return [{"role": m["role"], "content": [
        {"type": "text", "text": part["text"]} if part["type"] == "text"
        else {"type": "image_url", "image_url": {"url": data_uri(next(images))}} for part in m["content"]]}
        for m in turns]


def completion_of(choice: dict[str, Any], where: str) -> Completion:
    """A :class:`Completion` from one answer choice, its ids and log-probs from ``logprobs``."""
    import torch

    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        raise GenerationServerError(f"{where} returned no logprobs: GRPO trains on the sampled token ids, which "
                                    "vLLM and vlmtune serve return with logprobs and return_tokens_as_token_ids")
    try:
        ids = [int(entry["token"].removeprefix("token_id:")) for entry in content]
    except ValueError:
        raise GenerationServerError(f"{where} named tokens by text, not 'token_id:ID' (it ignores "
                                    "return_tokens_as_token_ids)") from None
    reason = "length" if choice.get("finish_reason") == "length" else "stop"
    return Completion(torch.tensor(ids, dtype=torch.long), (choice["message"]["content"] or "").strip(), reason,
                      torch.tensor([float(entry["logprob"]) for entry in content]))


class HTTPGenerator:
    """The ``http`` entry of ``GENERATORS`` (module docstring). ``model`` is the trainer's policy
    (saved for weight sync; never run here); ``batch_size`` is the number of requests in flight."""

    def __init__(self, model: Any, processor: Any, *, system_prompt: str | None = None, batch_size: int = 8,
                 base_urls: str | Sequence[str], api_key_env: str | None = None, timeout_s: float = 300.0,
                 retries: int = 3, backoff_s: float = 0.5, sync: str = "auto", sync_dir: str | None = None,
                 adapter_name: str = "policy"):
        import httpx

        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("generation.options.base_urls names no server")
        if sync not in ("auto", "lora", "full", "none"):
            raise ValueError(f"generation.options.sync must be auto, lora, full or none, not {sync!r}")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.system_prompt, self.batch_size = system_prompt, max(1, batch_size)
        self.retries, self.backoff_s, self.sync, self.adapter_name = retries, backoff_s, sync, adapter_name
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        self.client = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {key}"} if key else None)
        self.sync_root = Path(sync_dir) if sync_dir else Path(tempfile.mkdtemp(prefix="vlmtune-policy-"))
        self.served_model: str | None = None  # what requests name: the server's model, then the adapter
        self._next_url = itertools.count()

    # ------------------------------------------------------------------ generation
    def generate(self, samples: Sequence[Any], params: SamplingParams, *,
                 on_batch: Callable[[int], None] | None = None) -> list[list[Completion]]:
        if self.served_model is None:
            self.served_model = self._server_model()
        body = {"max_tokens": params.max_new_tokens, "n": params.n, "top_p": params.top_p,
                "temperature": params.temperature if params.do_sample else 0.0, "stop": list(params.stop) or None,
                "logprobs": True, "return_tokens_as_token_ids": True}
        if params.top_k and params.do_sample:  # vLLM's extra parameter; sent only when set
            body["top_k"] = params.top_k

        def one(i: int) -> list[Completion]:
            seed = None if params.seed is None else params.seed + i
            reply, url = self._post("/chat/completions", {**body, "model": self.served_model, "seed": seed,
                                                          "messages": chat_messages(samples[i], self.system_prompt)})
            choices = sorted(reply["choices"], key=lambda c: c.get("index", 0))
            if len(choices) != params.n:
                raise GenerationServerError(f"{url} answered {len(choices)} completions, {params.n} were asked")
            return [completion_of(c, url) for c in choices]

        out: list[list[Completion]] = []
        with concurrent.futures.ThreadPoolExecutor(self.batch_size, thread_name_prefix="vlmtune-http") as pool:
            for completions in pool.map(one, range(len(samples))):
                out.append(completions)
                if on_batch is not None:
                    on_batch(1)
        return out

    def _server_model(self) -> str:
        """The model the first server serves (``/v1/models``), named in requests until a LoRA sync."""
        reply, url = self._post("/models", None, server=self.base_urls[0])
        try:
            return reply["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise GenerationServerError(f"{url}/models lists no model") from None

    def _post(self, path: str, body: dict[str, Any] | None, server: str | None = None,
              root: bool = False) -> tuple[Any, str]:
        """``body`` to ``path`` (GET without one): on ``server``, retried there, or on the next
        server of the rotation, retried on the ones after it. ``root``: the path is outside
        ``/v1``. Returns the answer (JSON, or text) and the server that gave it."""
        import httpx

        if server is None:
            start = next(self._next_url)
            order = [self.base_urls[(start + a) % len(self.base_urls)] for a in range(self.retries + 1)]
        else:
            order = [server] * (self.retries + 1)
        error = ""
        for attempt, url in enumerate(order):
            target = (url.removesuffix("/v1") if root else url) + path
            try:
                r = self.client.post(target, json=body) if body is not None else self.client.get(target)
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code < 300:
                    return (r.json() if "json" in r.headers.get("content-type", "") else r.text), url
                if r.status_code not in RETRY_STATUS:
                    raise GenerationServerError(f"{target} refused the request: HTTP {r.status_code}: "
                                                f"{_message(r)}")
                error = f"HTTP {r.status_code}: {_message(r)}"
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2 ** attempt)
        raise GenerationServerError(f"generation server {', '.join(dict.fromkeys(order))} did not answer {path} "
                                    f"after {len(order)} attempts ({error})")

    # ------------------------------------------------------------------ weight sync
    def sync_weights(self, model: Any, step: int) -> None:
        """Push ``model`` (the trainer's policy after ``step`` updates) to every server."""
        import torch.distributed as dist

        if self.sync == "none":
            return
        lora = self.sync == "lora" or (self.sync == "auto" and hasattr(model, "peft_config"))
        main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
        if main:
            folder = (self.sync_root / f"step-{step}").resolve()
            shutil.rmtree(folder, ignore_errors=True)
            model.save_pretrained(str(folder), safe_serialization=True)
            for url in self.base_urls:  # every server must have it, each retried on itself
                if lora:
                    self._post("/load_lora_adapter", {"lora_name": self.adapter_name, "lora_path": str(folder),
                                                      "load_inplace": True}, server=url)
                else:
                    self._post("/update_weights_from_disk", {"model_path": str(folder)}, server=url, root=True)
            for old in sorted(self.sync_root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
                shutil.rmtree(old, ignore_errors=True)  # the last two stay: a server may still read the last
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if lora:
            self.served_model = self.adapter_name


def _message(response: Any) -> str:
    """The error message of an OpenAI- or vLLM-shaped error body, else the body's start."""
    try:
        body = response.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        return str(error.get("message", error) if isinstance(error, dict) else error)[:300]
    except ValueError:
        return response.text[:300]
