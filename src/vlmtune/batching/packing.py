"""Padding-free packing: several rendered samples end to end in one row, no padding.

A packed row holds each sample's per-token tensors (ids, labels, e.g. Qwen's
``mm_token_type_ids``) one after the other and ``seq_lengths``, the length of each sample
in order. It has no ``attention_mask``: the positions restart at 0 with each sample
(:func:`vlmtune.models.packing.packed_position_ids` makes them, with the family's own
rope-index function for Qwen's 3-D mRoPE), and transformers reads a restart of the
positions as the start of a new sequence, so a token attends only the tokens of its own
sample (a block-diagonal causal mask under SDPA, variable-length kernels under
flash-attention). Image tensors are concatenated in sample order, as :func:`collate` does,
which is the order in which the model fills the image tokens of the row.

The label of each sample's first token is cleared: in a row it would be predicted from the
previous sample's last token, while on its own nothing predicts it. Every other label is
kept, so a packed row carries exactly the loss tokens of the same samples padded, and the
loss (summed over label tokens, divided by the step's label tokens) is the same number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlmtune.batching.collate import join_per_sample, per_token
from vlmtune.batching.render import IGNORE


def sample_rows(lengths: Sequence[int], max_tokens: int | None) -> list[list[int]]:
    """Indices of samples per packed row, in order: a new row starts when the next sample
    would take the row past ``max_tokens`` (None: one row for all). A sample longer than
    ``max_tokens`` gets a row of its own."""
    rows: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        if not rows or (max_tokens is not None and used + n > max_tokens):
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def pack(items: list[dict[str, torch.Tensor]], token_keys: Sequence[str]) -> dict[str, Any]:
    """Rendered samples (each with batch dim 1) as one packed row of batch dim 1."""
    lengths = [item["input_ids"].shape[-1] for item in items]
    labels = []
    for item in items:
        row = item["labels"].clone()
        row[:, 0] = IGNORE
        labels.append(row)
    batch = join_per_sample(items, token_keys)
    for key in token_keys:
        if key not in ("attention_mask", "labels") and any(key in item for item in items):
            batch[key] = torch.cat(per_token(items, key), dim=1)
    batch["labels"] = torch.cat(labels, dim=1)
    batch["seq_lengths"] = torch.tensor(lengths)
    return batch


def packed_batches(items: list[dict[str, torch.Tensor]], token_keys: Sequence[str],
                   max_tokens: int | None) -> list[dict[str, Any]]:
    """One micro-batch's samples as packed rows of at most ``max_tokens`` tokens each."""
    lengths = [item["input_ids"].shape[-1] for item in items]
    return [pack([items[i] for i in row], token_keys) for row in sample_rows(lengths, max_tokens)]
