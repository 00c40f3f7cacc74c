"""Positions of a packed row (:mod:`vlmtune.batching.packing`): each sample's own, as if
it ran alone, end to end.

- 1-D families: ``0 .. n-1`` per sample, shape (1, T).
- mRoPE families (Qwen-VL): the family's own ``get_rope_index`` run on the row's samples laid
  out as a padded batch (the very call the unpadded forward makes), each sample's positions
  taken back out of it and concatenated: (3, 1, T). A fourth row in front, the plain text
  positions ``0 .. n-1`` per sample, is how transformers' Qwen-VL models take packed input:
  they build the attention mask from that row and the rotary embedding from the other three.
"""

from __future__ import annotations

from typing import Any

import torch

from vlmtune.batching.collate import pad_tokens
from vlmtune.models.families import Family


def base_model(model: Any) -> Any:
    """The transformers model under DDP and PEFT wrappers."""
    model = getattr(model, "module", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def text_positions(lengths: list[int]) -> torch.Tensor:
    """``0 .. n-1`` for each length ``n``, end to end: shape (1, sum of lengths)."""
    return torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)


def _mrope_positions(model: Any, batch: dict[str, Any], lengths: list[int]) -> torch.Tensor:
    ids, types = batch["input_ids"][0].split(lengths), batch["mm_token_type_ids"][0].split(lengths)
    mask = pad_tokens([torch.ones(1, n, dtype=torch.long) for n in lengths], 0).to(batch["input_ids"].device)
    grids = {k: batch[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in batch}
    positions, _ = base_model(model).model.get_rope_index(
        input_ids=pad_tokens([x.unsqueeze(0) for x in ids], 0), mm_token_type_ids=pad_tokens([x.unsqueeze(0) for x in types], 0),
        attention_mask=mask, **grids)
    return positions[:, mask.bool()].unsqueeze(1)  # (3, B, L) -> (3, 1, T), samples in order


def packed_position_ids(model: Any, family: Family, batch: dict[str, Any], seq_lengths: torch.Tensor) -> torch.Tensor:
    """``position_ids`` for a packed row whose samples have ``seq_lengths`` tokens (see the
    module docstring)."""
    lengths = [int(n) for n in seq_lengths]
    text = text_positions(lengths).to(batch["input_ids"].device)
    if family.position_style == "mrope":
        return torch.cat([text.unsqueeze(0), _mrope_positions(model, batch, lengths)], dim=0)
    return text
