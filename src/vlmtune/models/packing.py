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


# ----------------------------------------------------------------------------- attention
PACKED_SDPA = "sdpa_packed"
"""transformers attention implementation (registered on import): SDPA one packed sample at a
time. Under plain SDPA a packed row of T tokens runs as one T x T attention with a
block-diagonal mask, so every sample pays for attending all the others (masked out) and
the causal fast path is lost; by sample it costs the sum of each sample's square instead,
causal. Values are the same as plain SDPA's with the mask (the blocks it cuts away are all
masked), and anything that is not one packed row goes to plain SDPA unchanged."""


def segment_bounds(position_ids: torch.Tensor | None, length: int) -> list[int] | None:
    """Where the samples of a packed row start (and the row's end), read from its positions
    as transformers reads them (a position that does not follow its predecessor by one starts
    a sample); None when the positions are not those of one packed row."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape != (1, length):
        return None
    positions = position_ids[0]
    starts = (torch.diff(positions) != 1).nonzero().flatten() + 1
    if len(starts) == 0:
        return None
    return [0, *starts.tolist(), length]


def _causal(mask: torch.Tensor) -> bool:
    """A boolean (1, 1, L, L) mask that is exactly lower-triangular (SDPA's own causal mode)."""
    n = mask.shape[-1]
    return mask.dtype == torch.bool and mask.shape[:2] == (1, 1) and torch.equal(
        mask[0, 0], torch.ones(n, n, dtype=torch.bool, device=mask.device).tril())


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """:data:`PACKED_SDPA`: transformers' SDPA attention per sample of a packed row."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    bounds = segment_bounds(kwargs.get("position_ids"), length) if key.shape[2] == length else None
    if bounds is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    outputs = []
    for start, end in zip(bounds, bounds[1:]):
        mask = None if attention_mask is None else attention_mask[..., start:end, start:end]
        if mask is not None and _causal(mask):
            mask = None  # SDPA's causal path: the upper triangle is skipped, not computed and masked
        out, _ = sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end],
                                        value[:, :, start:end], mask, *args, **kwargs)
        outputs.append(out)
    return torch.cat(outputs, dim=1), None  # (1, T, heads, dim), as sdpa_attention_forward returns


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)


_register()


def use_packed_attention(model: Any) -> bool:
    """Switch the language model from SDPA to :data:`PACKED_SDPA` (the vision tower keeps its
    own); False when it runs something else (flash-attention reads packed rows by itself)."""
    inner = base_model(model)
    text = inner.config.get_text_config()
    if text._attn_implementation != "sdpa":
        return False
    key = next((k for k in inner.config.sub_configs if getattr(inner.config, k) is text), None)
    inner.set_attn_implementation({key: PACKED_SDPA} if key else PACKED_SDPA)
    return True
