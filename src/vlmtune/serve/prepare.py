"""What a well-formed request means: roles, limits and images checked, turned into the
canonical messages + decoded images + sampling parameters, or an :class:`APIError` (400).

Images arrive only as inline ``data:image/...;base64,`` URIs: the server never fetches a URL
or reads a local file on a client's behalf. Each image is measured from its header first, and
no pixel is decoded until every image of the request is known to be within the limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmtune.data.sample import BadSample, image_bytes, image_size, load_image
from vlmtune.rollout.generator import SamplingParams
from vlmtune.serve.errors import APIError
from vlmtune.serve.limits import Limits, check_image_sizes, check_prompt_tokens, check_seed, min_prompt_tokens
from vlmtune.serve.schema import ChatCompletionRequest, TextPart

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_REMOTE_SCHEMES = ("http", "https", "ftp", "file", "s3", "gs")


@dataclass
class Prepared:
    """A validated request: messages in the canonical format, decoded images, sampling.

    ``sampling.max_new_tokens`` is provisional until the prompt's length is known
    (:func:`vlmtune.serve.limits.completion_budget`); ``requested_max_tokens`` is what the client
    asked for, ``None`` when it left it to the server.
    """

    messages: list[dict]
    images: list[Any]
    sampling: SamplingParams
    requested_max_tokens: int | None
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False  # each completion token's log-probability (non-streaming answers)
    tokens_as_ids: bool = False  # ... named "token_id:ID" (vLLM's return_tokens_as_token_ids)


@dataclass
class _ImageRef:
    url: str
    where: str


def prepare(req: ChatCompletionRequest, limits: Limits, *, is_vlm: bool, model_name: str,
            max_prompt_tokens: int, max_token_chars: int) -> Prepared:
    """Check a request's meaning and turn it into messages + images, or raise APIError(400).

    ``max_token_chars`` (the tokenizer's longest token) bounds the prompt's token count from
    below, so an absurdly long text is refused before anything tokenises it.
    """
    sampling, requested = _sampling(req, limits)
    messages, refs, chars = _messages(req, is_vlm=is_vlm, model_name=model_name)
    if len(refs) > limits.max_images:
        raise APIError(400, f"the request has {len(refs)} images; this server accepts at most "
                            f"{limits.max_images} per request", param="messages", code="too_many_images")
    check_prompt_tokens(min_prompt_tokens(chars, max_token_chars), max_prompt_tokens, at_least=True)
    images = _decode_images(refs, limits)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return Prepared(messages, images, sampling, requested, bool(req.stream), include_usage, bool(req.logprobs),
                    bool(req.return_tokens_as_token_ids))


def _sampling(req: ChatCompletionRequest, limits: Limits) -> tuple[SamplingParams, int | None]:
    if req.logprobs and req.stream:
        raise APIError(400, "logprobs are given with non-streaming answers only", param="logprobs")
    if req.top_logprobs:
        raise APIError(400, "top_logprobs are not supported: logprobs give the sampled tokens' only",
                       param="top_logprobs")
    if req.tools:
        raise APIError(400, "tools are not supported by this server", param="tools")
    if req.stream and req.n > 1:
        raise APIError(400, "stream=true supports n=1 only", param="n")
    requested = req.max_completion_tokens or req.max_tokens
    if requested is not None and requested > limits.max_new_tokens:
        raise APIError(400, f"max_tokens={requested} exceeds this server's limit of {limits.max_new_tokens}",
                       param="max_tokens")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise APIError(400, "stop must be up to 4 non-empty strings", param="stop")
    check_seed(req.seed)
    max_new = requested or min(limits.default_max_tokens, limits.max_new_tokens)
    # temperature 0 is greedy (deterministic), as OpenAI's API means it
    return SamplingParams(max_new, req.temperature, req.top_p, do_sample=req.temperature > 0, n=req.n,
                          stop=tuple(stop), seed=req.seed), requested


def _messages(req: ChatCompletionRequest, *, is_vlm: bool, model_name: str
              ) -> tuple[list[dict], list[_ImageRef], int]:
    """Canonical messages, the image references in placeholder order, and the text length."""
    if not req.messages:
        raise APIError(400, "messages must contain at least one message", param="messages")
    messages: list[dict] = []
    refs: list[_ImageRef] = []
    chars = 0
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
                chars += len(part.text)
                continue
            where = f"messages[{i}].content[{j}].image_url"
            if not is_vlm:
                raise APIError(400, f"{where}: model {model_name!r} is a text-only language model and "
                                    "cannot take images", param=where, code="images_not_supported")
            if role != "user":
                raise APIError(400, f"{where}: images are only accepted in user messages", param=where)
            refs.append(_ImageRef(part.image_url.url, where))
            content.append({"type": "image"})
        if is_vlm:
            messages.append({"role": role, "content": content})
        else:  # text-only chat templates expect string content
            messages.append({"role": role, "content": "\n".join(p["text"] for p in content)})
    if messages[-1]["role"] != "user":
        raise APIError(400, f"the last message must be from the user (got {messages[-1]['role']!r})",
                       param=f"messages[{len(messages) - 1}].role")
    return messages, refs, chars


def _decode_images(refs: list[_ImageRef], limits: Limits) -> list[Any]:
    """All headers first (sizes checked against the limits), then the pixels."""
    data = [_data_uri_bytes(r.url, r.where) for r in refs]
    sizes = [_guarded(image_size, d, r.where) for d, r in zip(data, refs)]
    check_image_sizes(sizes, [r.where for r in refs], limits)
    return [_guarded(load_image, d, r.where) for d, r in zip(data, refs)]


def _data_uri_bytes(url: str, where: str) -> bytes:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in _REMOTE_SCHEMES:
        raise APIError(400, f"{where}: {scheme}:// image URLs are not fetched by this server; send the "
                            "image inline as a data:image/...;base64,... URI", param=where,
                       code="image_url_not_supported")
    if scheme != "data":
        raise APIError(400, f"{where}: the image URL must be a data:image/...;base64,... URI", param=where,
                       code="image_url_not_supported")
    data = _guarded(image_bytes, "data" + url[len(scheme):], where)
    if not data:
        raise APIError(400, f"{where}: the data URI holds no bytes", param=where, code="invalid_image")
    return data


def _guarded(fn: Any, arg: Any, where: str) -> Any:
    """``fn(arg)`` with :class:`BadSample` (the data layer's image errors) as a 400 naming the part."""
    try:
        return fn(arg)
    except BadSample as exc:
        raise APIError(400, f"{where}: the image cannot be decoded ({exc.detail})", param=where,
                       code="invalid_image") from None
