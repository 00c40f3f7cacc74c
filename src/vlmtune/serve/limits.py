"""The bounds the server enforces, and the pure checks behind them.

Every bound turns an expensive request into a cheap, clear error *before* the expensive part
runs: body bytes are counted as they arrive (413), images are measured from their header before
their pixels are decoded (400), and a prompt is measured in tokens before generation (400).
"""

from __future__ import annotations

import math
from vlmtune.config import MIB, ServeLimits
from vlmtune.serve.errors import APIError

__all__ = ["FALLBACK_CONTEXT", "MIB", "Limits", "check_image_sizes", "check_prompt_tokens", "check_seed",
           "completion_budget", "min_prompt_tokens"]

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # int64, as other OpenAI-compatible servers take it
FALLBACK_CONTEXT = 8192  # prompt-token bound when the model's config names no context length
Limits = ServeLimits
"""What one request may ask of the server: the recipe's ``serve.limits`` section (one
definition, :class:`vlmtune.config.ServeLimits`; ``vlmtune serve --help`` lists the same)."""


def check_seed(seed: int | None) -> None:
    """A seed torch can take: a 64-bit signed integer (larger ones used to fail with a 500)."""
    if seed is not None and not SEED_MIN <= seed <= SEED_MAX:
        raise APIError(400, f"seed must be an integer from {SEED_MIN} to {SEED_MAX} (a signed 64-bit "
                            f"integer); got one with {seed.bit_length()} bits", param="seed")


def min_prompt_tokens(chars: int, max_token_chars: int) -> int:
    """A lower bound on the tokens of ``chars`` characters of text: no token covers more than
    ``max_token_chars`` characters, so the text needs at least ``ceil(chars / max_token_chars)``.
    It lets a huge prompt be refused without tokenising it."""
    return math.ceil(chars / max(1, max_token_chars))


def check_prompt_tokens(prompt_tokens: int, max_prompt_tokens: int, *, at_least: bool = False) -> None:
    """400 when the prompt is longer than the server accepts (``at_least``: a lower bound)."""
    if prompt_tokens > max_prompt_tokens:
        size = f"at least {prompt_tokens}" if at_least else f"{prompt_tokens}"
        raise APIError(400, f"the prompt has {size} tokens; this server accepts at most {max_prompt_tokens} "
                            "prompt tokens", param="messages", code="context_length_exceeded")


def completion_budget(prompt_tokens: int, requested: int | None, default: int, context: int | None) -> int:
    """``max_new_tokens`` for a prompt of ``prompt_tokens`` tokens.

    An explicit request (``requested``) that does not fit the context is a 400, as OpenAI answers;
    the server's ``default`` is shrunk to what fits. ``context=None``: no context bound known.
    """
    if context is None:
        return requested or default
    room = context - prompt_tokens
    if room < 1:
        raise APIError(400, f"the prompt has {prompt_tokens} tokens and fills the model's context of "
                            f"{context} tokens", param="messages", code="context_length_exceeded")
    if requested is None:
        return min(default, room)
    if requested > room:
        raise APIError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens={requested} exceed the "
                            f"model's context of {context} tokens", param="max_tokens",
                       code="context_length_exceeded")
    return requested


def check_image_sizes(sizes: list[tuple[int, int]], where: list[str], limits: Limits) -> None:
    """400 for an image, or a request's images together, above the pixel limits."""
    total = 0
    for (w, h), at in zip(sizes, where):
        if w * h > limits.max_image_pixels:
            raise APIError(400, f"{at}: the image is {w}x{h} = {w * h} pixels; this server accepts at most "
                                f"{limits.max_image_pixels} pixels per image", param=at, code="image_too_large")
        total += w * h
    if total > limits.max_request_pixels:
        raise APIError(400, f"the request's {len(sizes)} images have {total} pixels together; this server "
                            f"accepts at most {limits.max_request_pixels} per request", param="messages",
                       code="image_too_large")
