"""Sampling each prompt's n completions on one shared prompt prefix.

``model.generate(num_return_sequences=n)`` repeats an encoded prompt n times before its
first forward: the images go through the vision tower n times and the prompt is prefilled n
times. Here each prompt runs once, alone (batch 1, no padding: the very forward the
shared-prefix log-prob pass runs, :func:`vlmtune.rollout.hf.shared_prefix_logps`), its
key/value cache is repeated n times, and the completions of all prompts then decode together
in one batch, one token per step, each row at its own positions. Prompts of different lengths
are left-padded in the stacked cache and masked out, so no row attends to another prompt or
to padding.

Sampling is softmax of ``logits / temperature``, cut to the top-k tokens (``top_k`` > 0) and
the top-p nucleus, nothing else: with the defaults (no top-k, top-p 1) exactly the
distribution the GRPO loss's log-probs are computed under. The checkpoint's generation config
is not read (``generate`` would add any top-k it names).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vlmtune.rollout.generator import SamplingParams


def inner_model(model: Any) -> Any:
    """The transformers model under DDP and PEFT wrappers."""
    model = getattr(model, "module", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def next_position(model: Any, prompt_len: int, position_style: str) -> int:
    """Position of the first token after a ``prompt_len``-token prompt that ``model`` has just
    run (batch 1). mRoPE: after the prompt's largest position (the rope delta the forward
    stored); 1-D: ``prompt_len``."""
    if position_style == "mrope":
        return prompt_len + int(inner_model(model).model.rope_deltas.reshape(-1)[0])
    return prompt_len


def position_ids(start: Tensor, offset: int, length: int, position_style: str) -> Tensor:
    """Positions of ``length`` tokens per row, the first at ``start + offset`` (``start``:
    (R,)): (R, length), or for mRoPE (3, R, length), the three axes equal (text)."""
    pos = start.view(-1, 1) + offset + torch.arange(length, device=start.device)
    return pos.unsqueeze(0).expand(3, -1, -1) if position_style == "mrope" else pos


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """(N, V) logits with every token outside the nucleus set to -inf. The nucleus is the
    smallest set of most probable tokens whose probability sum reaches ``top_p``; the most
    probable token is always kept (as transformers' top-p warper)."""
    if top_p >= 1.0:
        return logits
    ascending, order = logits.sort(dim=-1)
    cut = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
    cut[..., -1] = False
    return logits.masked_fill(cut.scatter(-1, order, cut), float("-inf"))


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """(N, V) logits with all but the ``k`` largest of each row set to -inf (ties at the k-th
    value kept); ``k`` = 0 keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def next_tokens(logits: Tensor, params: SamplingParams) -> Tensor:
    """(N,) the next token of each row from its (N, V) logits: argmax when greedy, else a draw
    from ``softmax(logits / temperature)`` cut to the top-k tokens, then to the top-p nucleus
    (transformers' order)."""
    if not params.do_sample:
        return logits.argmax(-1)
    scaled = top_k_filter(logits.float() / params.temperature, params.top_k)
    probs = top_p_filter(scaled, params.top_p).softmax(-1)
    return torch.multinomial(probs, 1).squeeze(-1)


@dataclass
class Prefix:
    """A prompt after its one forward: the key/value cache repeated for its rows, the last
    position's logits, the prompt length and the position its completions start at."""

    cache: Any
    logits: Tensor  # (rows, V)
    length: int
    start: int


def prefill(model: Any, prompt: dict[str, Any], rows: int, position_style: str) -> Prefix | None:
    """Run one prompt (processor outputs, batch 1) and repeat its cache ``rows`` times; None
    when the model keeps no cache."""
    out = model(**prompt, use_cache=True, logits_to_keep=1)
    length = prompt["input_ids"].shape[1]
    if out.past_key_values is None:
        return None
    out.past_key_values.batch_repeat_interleave(rows)
    return Prefix(out.past_key_values, out.logits[:, -1].expand(rows, -1), length,
                  next_position(model, length, position_style))


def stackable(prefixes: list[Prefix]) -> bool:
    """Whether the caches can be stacked into one batch: plain full-attention layers only
    (a sliding-window layer's window would count the left padding)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for p in prefixes for layer in getattr(p.cache, "layers", [None]))


def stack(prefixes: list[Prefix]) -> tuple[Any, Tensor, Tensor, Tensor]:
    """One batch of all prefixes' rows: the stacked cache (every prompt left-padded to the
    longest), its (R, W) attention mask, the (R, V) logits and the (R,) start positions."""
    width = max(p.length for p in prefixes)
    cache = prefixes[0].cache
    for i, layer in enumerate(cache.layers if len(prefixes) > 1 else []):
        parts = [(p.cache.layers[i], width - p.length) for p in prefixes]
        layer.keys = torch.cat([F.pad(part.keys, (0, 0, pad, 0)) for part, pad in parts])
        layer.values = torch.cat([F.pad(part.values, (0, 0, pad, 0)) for part, pad in parts])
    device = prefixes[0].logits.device
    mask = torch.cat([torch.arange(width, device=device).expand(p.logits.shape[0], -1) >= width - p.length
                      for p in prefixes]).long()
    starts = torch.cat([torch.full((p.logits.shape[0],), p.start, device=device) for p in prefixes])
    return cache, mask, torch.cat([p.logits for p in prefixes]), starts


def decode(model: Any, cache: Any, mask: Tensor, logits: Tensor, starts: Tensor, params: SamplingParams,
           end_ids: Collection[int], pad_id: int, position_style: str) -> Tensor:
    """(R, T) sampled ids, one token per step for all R rows; a row that drew an end token
    gets ``pad_id`` after it. Stops at ``max_new_tokens`` or when every row has ended."""
    rows, width = mask.shape
    ends = torch.tensor(sorted(end_ids), device=mask.device, dtype=torch.long)
    done = torch.zeros(rows, dtype=torch.bool, device=mask.device)
    out: list[Tensor] = []
    mask = torch.cat([mask, mask.new_ones(rows, params.max_new_tokens)], dim=1)  # step t reads a prefix of it
    for t in range(params.max_new_tokens):
        tok = next_tokens(logits, params).masked_fill(done, pad_id)
        out.append(tok)
        done |= torch.isin(tok, ends)
        if t + 1 == params.max_new_tokens or bool(done.all()):
            break
        logits = model(input_ids=tok[:, None], attention_mask=mask[:, :width + t + 1], past_key_values=cache,
                       use_cache=True,
                       position_ids=position_ids(starts, t, 1, position_style),
                       cache_position=torch.tensor([width + t], device=mask.device)).logits[:, -1]
    return torch.stack(out, dim=1)


@torch.no_grad()
def sample_on_shared_prefix(model: Any, prompts: list[dict[str, Any]], params: SamplingParams,
                            end_ids: Collection[int], pad_id: int, position_style: str) -> list[Tensor] | None:
    """``params.n`` completions of each prompt (processor outputs, batch 1 each, on the
    model's device): per prompt a (n, T) tensor of ids, ``pad_id`` after an end token. None
    when the model keeps no key/value cache (callers then use ``generate``)."""
    prefixes = [prefill(model, p, params.n, position_style) for p in prompts]
    if any(p is None for p in prefixes):
        return None
    batches = [prefixes] if stackable(prefixes) else [[p] for p in prefixes]
    out: list[Tensor] = []
    for batch in batches:
        ids = decode(model, *stack(batch), params, end_ids, pad_id, position_style)
        out.extend(ids.split(params.n))
    return out
