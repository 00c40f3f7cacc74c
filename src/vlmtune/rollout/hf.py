"""Generation through transformers' ``generate`` and the log-probabilities of what was
generated. Other backends (vLLM, an OpenAI-compatible server) implement the same
:class:`Generator` protocol and return the same :class:`Rollout`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from vlmtune.batching.collate import collate
from vlmtune.batching.render import render_prompt
from vlmtune.data.sample import Sample


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = True


@dataclass
class Rollout:
    """G completions of one prompt.

    ``completion_ids`` is (G, T) right-padded with ``pad_id``; ``mask`` marks real tokens
    (the end-of-turn token included); ``truncated`` marks completions that hit
    ``max_new_tokens`` without ending.
    """

    sample: Sample
    prompt: dict[str, torch.Tensor]  # processor outputs, batch dim 1
    completion_ids: torch.Tensor
    mask: torch.Tensor
    texts: list[str]
    truncated: list[bool]


class Generator(Protocol):
    def generate(self, samples: list[Sample], n: int, params: SamplingParams) -> list[Rollout]: ...


def end_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a completion: the generation config's eos ids and the tokenizer's."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def completion_mask(ids: torch.Tensor, end_ids: set[int]) -> tuple[torch.Tensor, list[bool]]:
    """Mask up to and including the first end token of each row; rows without one are truncated."""
    is_end = torch.zeros_like(ids, dtype=torch.bool)
    for e in end_ids:
        is_end |= ids == e
    seen_before = torch.cumsum(is_end.int(), dim=1) - is_end.int()  # end tokens strictly before t
    mask = seen_before == 0
    return mask.long(), [not bool(row.any()) for row in is_end]


class HFGenerator:
    """Sampling with the policy itself (no extra copy), one ``generate`` call per prompt."""

    def __init__(self, model: Any, processor: Any, system_prompt: str | None = None):
        self.model, self.processor, self.system_prompt = model, processor, system_prompt
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.end_ids = end_token_ids(model, self.tokenizer)

    @torch.no_grad()
    def generate(self, samples: list[Sample], n: int, params: SamplingParams) -> list[Rollout]:
        was_training = self.model.training
        self.model.eval()
        out = [self._one(s, n, params) for s in samples]
        self.model.train(was_training)
        return out

    def _one(self, sample: Sample, n: int, params: SamplingParams) -> Rollout:
        prompt = render_prompt(sample, self.processor, system_prompt=self.system_prompt)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in prompt.items()}
        sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p} \
            if params.do_sample else {"do_sample": False}
        seqs = self.model.generate(**inputs, max_new_tokens=params.max_new_tokens, num_return_sequences=n,
                                   pad_token_id=self.pad_id, eos_token_id=sorted(self.end_ids), **sampling)
        ids = seqs[:, prompt["input_ids"].shape[1]:].cpu()  # (G, T)
        mask, truncated = completion_mask(ids, self.end_ids)
        ids = torch.where(mask.bool(), ids, torch.full_like(ids, self.pad_id))
        texts = [self.tokenizer.decode(row[m.bool()], skip_special_tokens=True).strip()
                 for row, m in zip(ids, mask)]
        return Rollout(sample, prompt, ids, mask, texts, truncated)


def group_inputs(rollout: Rollout, pad_id: int) -> dict[str, Any]:
    """One forward batch for a group: the prompt (with its images) repeated G times, each
    followed by its completion. Prompt lengths are equal, so completions line up."""
    g = rollout.completion_ids.shape[0]
    rows = []
    for i in range(g):
        item = dict(rollout.prompt)
        item["input_ids"] = torch.cat([rollout.prompt["input_ids"], rollout.completion_ids[i:i + 1]], dim=1)
        tail = rollout.completion_ids.shape[1]
        for key in ("attention_mask", "mm_token_type_ids", "token_type_ids"):
            if key in item:
                fill = rollout.mask[i:i + 1] if key == "attention_mask" else torch.zeros(1, tail, dtype=item[key].dtype)
                item[key] = torch.cat([item[key], fill.to(item[key].dtype)], dim=1)
        rows.append(item)
    return collate(rows, pad_id)


def completion_logps(model: Any, batch: dict[str, Any], prompt_len: int, completion_ids: torch.Tensor,
                     with_entropy: bool = False, temperature: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (G, T) of the completion tokens under the sampling temperature
    (as the tokens were drawn), and optionally the entropies (G, T)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    logits = model(**batch, use_cache=False).logits  # (G, P + T, V)
    t = completion_ids.shape[1]
    logits = logits[:, prompt_len - 1: prompt_len - 1 + t].float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, completion_ids.to(device).unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1).detach()
    return logp, entropy
