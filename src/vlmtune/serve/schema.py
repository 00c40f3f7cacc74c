"""The chat-completions request as OpenAI clients send it (pydantic; malformed bodies -> 422).

Only the shape is checked here; what a request means (roles, limits, images) is checked in
:mod:`vlmtune.serve.prepare`, which answers 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str | None = Field(None, description="The served model's name or a loaded adapter's (see weights.py).")
    messages: list[ChatMessage]
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    return_tokens_as_token_ids: bool | None = Field(
        False, description="vLLM's extension: logprobs name each token as 'token_id:ID' (what a trainer needs).")
    tools: list[Any] | None = None


class LoadLoRAAdapterRequest(_Lenient):
    """vLLM's body for ``POST /v1/load_lora_adapter``."""

    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(_Lenient):
    """vLLM's body for ``POST /v1/unload_lora_adapter`` (``lora_int_id`` is accepted, unused)."""

    lora_name: str
    lora_int_id: int | None = None


class UpdateWeightsFromDiskRequest(_Lenient):
    """SGLang's body for ``POST /update_weights_from_disk``."""

    model_path: str
    load_format: str | None = None
    weight_version: str | None = None
