"""Generation with one loaded model, free of HTTP: :meth:`Engine.encode` turns canonical
messages + images into model inputs, :meth:`Engine.generate` samples completions from them
through the transformers backend of the generation interface
(:class:`~vlmtune.rollout.hf.HFGenerator`, the one ``vlmtune eval`` and GRPO use too).

The two steps are separate so that a request is encoded once, checked against the server's
limits (prompt tokens) before it takes a generation slot, and generated from the same inputs.
Both are blocking and safe to call from several worker threads (the server runs them in its
generation slots). ``generate`` takes a ``cancel`` flag, checked before every new token, and
an ``on_text`` callback that receives the completion's text as it grows (streaming).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from vlmtune.models.loading import context_length
from vlmtune.rollout.generator import Completion, SamplingParams
from vlmtune.rollout.hf import HFGenerator


class PromptError(ValueError):
    """The model's chat template or processor rejected the conversation."""


class Engine:
    """A loaded model (:class:`vlmtune.models.loading.Loaded`) behind the transformers backend,
    which returns exactly what the model wrote (no trimming)."""

    def __init__(self, loaded: Any, model_name: str):
        self.model_name = model_name
        self.processor, self.tokenizer = loaded.processor, loaded.tokenizer
        self.is_vlm = loaded.family is not None
        if not getattr(self.processor, "chat_template", None) and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"model {model_name!r} has no chat template; /v1/chat/completions needs one")
        self.generator = HFGenerator(loaded.model, self.processor, family=loaded.family, batch_size=1,
                                     strip_text=False)
        if not self.generator.end_ids:
            raise ValueError(f"model {model_name!r} defines no end-of-sequence token")
        self.context_length = context_length(loaded.model)
        # No token spans more characters than the longest vocabulary entry: a cheap lower bound
        # on a text's token count (see vlmtune.serve.limits.min_prompt_tokens).
        self.max_token_chars = max(len(t) for t in self.tokenizer.get_vocab())

    @property
    def model(self) -> Any:
        return self.generator.model

    @model.setter
    def model(self, model: Any) -> None:
        """The served weights swapped (:mod:`vlmtune.serve.weights` wraps the model in PEFT
        when a first adapter loads and unwraps it after the last)."""
        self.generator.model = model

    def encode(self, messages: list[dict], images: list[Any]) -> dict[str, Any]:
        """Model inputs (batch dim 1) for a conversation that ends with a user turn."""
        try:
            if self.is_vlm:
                from vlmtune.data.sample import Sample

                return self.generator.encode([Sample(messages=messages, images=images)])
            with self.generator.tokenizer_lock:  # text-only chat templates want string content
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                return dict(self.tokenizer(text, add_special_tokens=False, return_tensors="pt"))
        except Exception as exc:  # jinja TemplateError, processor complaints
            raise PromptError(f"the model's chat template or processor rejected the conversation: "
                              f"{type(exc).__name__}: {exc}") from None

    def generate(self, inputs: dict[str, Any], params: SamplingParams, *, cancel: threading.Event | None = None,
                 on_text: Callable[[str], None] | None = None, logprobs: bool = False) -> list[Completion]:
        """``params.n`` completions of the prompt in ``inputs``. ``cancel`` stops generation at
        the next token; ``on_text`` (n=1 only) gets each new piece of decoded text; ``logprobs``
        adds each token's log-probability under the sampling distribution."""
        return self.generator.generate_encoded(inputs, params, cancel=cancel, on_text=on_text, logprobs=logprobs)[0]

    def logprobs_content(self, completion: Completion, tokens_as_ids: bool) -> list[dict[str, Any]]:
        """OpenAI's ``choices[].logprobs.content``: one entry per generated token (the end token
        included), named by its text or, as vLLM's ``return_tokens_as_token_ids`` does,
        ``token_id:ID``."""
        ids = completion.ids.tolist()
        with self.generator.tokenizer_lock:
            pieces = [self.tokenizer.decode([i]) for i in ids]
        return [{"token": f"token_id:{i}" if tokens_as_ids else piece, "logprob": float(lp),
                 "bytes": list(piece.encode()), "top_logprobs": []}
                for i, piece, lp in zip(ids, pieces, completion.logprobs.tolist())]
