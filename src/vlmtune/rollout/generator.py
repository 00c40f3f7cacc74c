"""The one generation interface: prompts (canonical samples) in, completions out.

GRPO samples its groups through it, ``vlmtune eval``, ``vlmtune agent`` and multi-turn
episodes (``vlmtune rollout``) generate through it, and ``vlmtune serve`` puts its
transformers backend behind HTTP. A backend is a class with one method::

    generate(samples, params, *, on_batch=None) -> list[list[Completion]]

returning ``params.n`` completions of each sample's prompt, in sample order. Each
:class:`Completion` carries the sampled token ids (what an RL update trains on, never a
re-tokenisation of the text), the text and why it ended. Backends are named in
``GENERATORS`` (:mod:`vlmtune.registry`; built-in ``hf``, the in-process transformers
backend of :mod:`vlmtune.rollout.hf`) and chosen by the recipe's ``generation.backend``;
one of your own is ``module:Class`` / ``file.py:Class`` (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # light at import: the CLI's help builds without torch
    import torch

    from vlmtune.data.sample import Sample

FinishReason = Literal["stop", "length"]


@dataclass
class SamplingParams:
    """How to sample. ``do_sample=False`` is greedy (deterministic, ``temperature`` and
    ``top_p`` unused); ``n`` completions per prompt (GRPO's G); a completion ends at the
    model's end tokens, at ``max_new_tokens``, or before the first of the ``stop`` strings;
    ``seed`` makes sampling repeatable; ``top_k`` > 0 keeps only the k most probable tokens
    (before top-p; 0 = off, the distribution GRPO's log-probs are computed under)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = True
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int = 0


@dataclass
class Completion:
    """One completion: ``ids`` (T,) are the generated tokens up to and including the end
    token (no padding); ``finish_reason`` is ``"stop"`` (an end token or stop string) or
    ``"length"`` (``max_new_tokens`` reached without ending). ``logprobs`` (T,), when the
    backend reports them, are each token's log-probability under the distribution it was
    sampled from (temperature applied, before top-p): a trainer compares them with its own
    to see how far the sampler's policy is from the one it trains (never trains on them)."""

    ids: torch.Tensor
    text: str
    finish_reason: FinishReason
    logprobs: torch.Tensor | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def tokens(self) -> int:
        return int(self.ids.numel())


class Generator(Protocol):
    """A generation backend (see the module docstring)."""

    def generate(self, samples: Sequence[Sample], params: SamplingParams, *,
                 on_batch: Callable[[int], None] | None = None) -> list[list[Completion]]:
        """``params.n`` completions of each sample's prompt (a trailing assistant turn, the
        reference answer, is not shown), in sample order. ``on_batch(k)`` is called as ``k``
        more samples are done (progress bars)."""
        ...


def build_generator(backend: str, model: Any, processor: Any, *, system_prompt: str | None = None,
                    batch_size: int = 8, options: dict[str, Any] | None = None) -> Generator:
    """The backend named ``backend`` (a ``GENERATORS`` name, ``module:Class`` or
    ``file.py:Class``) over ``model`` and its ``processor``, sending ``batch_size`` prompts
    per call; ``options`` are the backend's own keyword arguments (the recipe's
    ``generation.options``)."""
    from vlmtune.registry import GENERATORS

    make = GENERATORS.get(backend)
    generator = make(model, processor, system_prompt=system_prompt, batch_size=batch_size, **(options or {}))
    if not callable(getattr(generator, "generate", None)):
        raise TypeError(f"generation backend {backend!r} built a {type(generator).__name__}, which has no "
                        "generate(samples, params) method")
    return generator


def first_texts(completions: list[list[Completion]]) -> list[str]:
    """The text of each prompt's first completion (``n == 1``: evaluation, agents, episodes)."""
    return [c[0].text for c in completions]
