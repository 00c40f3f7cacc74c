"""Batched generation for evaluation: many prompts per ``generate`` call.

:class:`~vlmtune.rollout.hf.HFGenerator` runs one prompt at a time (what GRPO needs: G
completions of one prompt). Evaluation wants the opposite: one greedy completion of many
prompts. :class:`BatchedGenerator` renders each prompt exactly as
:func:`~vlmtune.batching.render.render_prompt` does (same chat template, same system
prompt, trailing reference answer left out), then calls the *processor* once on the whole
batch of texts and images, left-padded, so image tensors come out laid out the way the
family expects for a batch (Qwen: concatenated patches + ``image_grid_thw``; LLaVA /
Gemma3 / InternVL: stacked images; Idefics3: a per-sample image axis). Greedy outputs are
the same as the one-at-a-time path (a test holds them side by side).

Samples with and without images are never mixed in one processor call (processors want
either images for every text or none); a batch is split into those two groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlmtune.batching.render import prompt_text
from vlmtune.data.sample import Sample
from vlmtune.models.families import Family
from vlmtune.rollout.hf import SamplingParams, completion_mask, stop_and_pad_ids

__all__ = ["BatchedGenerator", "Completion"]


@dataclass
class Completion:
    """One generated completion: token ids (T,), the mask of real tokens (T,) up to and
    including the end token, and whether it hit ``max_new_tokens`` without ending."""

    ids: torch.Tensor
    mask: torch.Tensor
    truncated: bool


class BatchedGenerator:
    """One completion per prompt, ``batch_size`` prompts per ``generate`` call. Generation
    stops at the family's end tokens (``family`` defaults to the model's; ``None`` for a
    text-only model)."""

    def __init__(self, model: Any, processor: Any, system_prompt: str | None = None,
                 family: Family | None = None):
        self.model, self.processor, self.system_prompt = model, processor, system_prompt
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.end_ids, self.pad_id = stop_and_pad_ids(model, self.tokenizer, family)

    def encode(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """Processor outputs for a batch of prompts, left-padded (all with images or none)."""
        texts = [prompt_text(s, self.processor, self.system_prompt) for s in samples]
        images = [s.load_images() for s in samples]
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "add_special_tokens": False,
                                  "padding": True}
        if any(images):
            if not all(images):
                raise ValueError("encode: a batch mixes samples with and without images")
            kwargs["images"] = images
        old_side = getattr(self.tokenizer, "padding_side", "right")
        self.tokenizer.padding_side = "left"
        try:
            return dict(self.processor(**kwargs))
        finally:
            self.tokenizer.padding_side = old_side

    @torch.no_grad()
    def generate(self, samples: Sequence[Sample], params: SamplingParams | None = None,
                 batch_size: int = 8, on_batch: Callable[[int], None] | None = None) -> list[str]:
        """Completion texts in sample order. ``on_batch(k)`` is called after each ``generate``
        call with the number of samples it finished (for progress bars)."""
        return [self.decode(c) for c in self.generate_ids(samples, params, batch_size, on_batch)]

    def decode(self, completion: Completion) -> str:
        return self.tokenizer.decode(completion.ids[completion.mask.bool()], skip_special_tokens=True).strip()

    @torch.no_grad()
    def generate_ids(self, samples: Sequence[Sample], params: SamplingParams | None = None,
                     batch_size: int = 8, on_batch: Callable[[int], None] | None = None) -> list[Completion]:
        """The completions as token ids, in sample order (what an RL update trains on: the
        sampled tokens themselves, not a re-tokenisation of their text)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        params = params or SamplingParams(do_sample=False)
        was_training = self.model.training
        self.model.eval()
        out: list[Completion | None] = [None] * len(samples)
        try:
            for start in range(0, len(samples), batch_size):
                idx = list(range(start, min(start + batch_size, len(samples))))
                with_img = [i for i in idx if samples[i].images]
                without = [i for i in idx if not samples[i].images]
                for group in (with_img, without):
                    if not group:
                        continue
                    for i, completion in zip(group, self._batch([samples[i] for i in group], params)):
                        out[i] = completion
                if on_batch is not None:
                    on_batch(len(idx))
        finally:
            self.model.train(was_training)
        return out  # type: ignore[return-value]  # every index was filled

    def _batch(self, samples: list[Sample], params: SamplingParams) -> list[Completion]:
        enc = self.encode(samples)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in enc.items()}
        sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p} \
            if params.do_sample else {"do_sample": False}
        seqs = self.model.generate(**inputs, max_new_tokens=params.max_new_tokens,
                                   pad_token_id=self.pad_id, eos_token_id=sorted(self.end_ids), **sampling)
        ids = seqs[:, enc["input_ids"].shape[1]:].cpu()
        mask, truncated = completion_mask(ids, self.end_ids)
        return [Completion(row, m, t) for row, m, t in zip(ids, mask, truncated)]
