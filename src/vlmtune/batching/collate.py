"""Collate per-sample processor outputs into a padded batch.

Per-token tensors (the family's :attr:`~vlmtune.models.families.Family.token_keys`: ids,
attention mask, labels and e.g. Qwen's ``mm_token_type_ids``) are padded along the
sequence; every other tensor is concatenated along its first axis, which is how every
supported processor lays them out for a batch (Qwen: patches; LLaVA/InternVL/Gemma3:
images). Families whose processor returns a per-sample image axis (``pixel_values`` of
shape (1, n_images, C, H, W) and a (1, n_images, H, W) ``pixel_attention_mask``, e.g.
Idefics3) are padded along that axis too, so samples with different image counts stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from vlmtune.batching.render import IGNORE

def _pad_value(key: str, pad_id: int) -> int:
    return {"input_ids": pad_id, "labels": IGNORE}.get(key, 0)


def pad_tokens(rows: list[torch.Tensor], value: int, side: str = "right") -> torch.Tensor:
    """(1, T_i) tensors -> (B, max T) padded with ``value`` on ``side``."""
    width = max(r.shape[-1] for r in rows)
    padded = []
    for r in rows:
        gap = width - r.shape[-1]
        padded.append(F.pad(r, (gap, 0) if side == "left" else (0, gap), value=value))
    return torch.cat(padded, dim=0)


def _cat_images(rows: list[torch.Tensor], image_axis: bool) -> torch.Tensor:
    if image_axis and rows[0].dim() >= 4 and all(r.shape[0] == 1 for r in rows):
        # (1, n_images, ...): pad the image axis, then stack samples
        most = max(r.shape[1] for r in rows)
        rows = [F.pad(r, (0, 0) * (r.dim() - 2) + (0, most - r.shape[1])) for r in rows]
    return torch.cat(rows, dim=0)


def per_token(items: list[dict[str, torch.Tensor]], key: str) -> list[torch.Tensor]:
    """Every sample's ``key`` tensor; an error when some sample lacks it."""
    if any(key not in item for item in items):
        raise ValueError(f"'{key}' is missing from some samples of the batch")
    return [item[key] for item in items]


def join_per_sample(items: list[dict[str, Any]], token_keys: Sequence[str]) -> dict[str, Any]:
    """Everything but the per-token tensors: tensors concatenated in sample order (images,
    grids), anything else as a list."""
    tensors = [v for item in items for k, v in item.items() if k not in token_keys and torch.is_tensor(v)]
    image_axis = any(t.dim() >= 5 for t in tensors)  # (1, n_images, C, H, W) and its (1, n_images, H, W) masks
    batch: dict[str, Any] = {}
    for key in dict.fromkeys(k for item in items for k in item):
        if key in token_keys:
            continue
        rows = [item[key] for item in items if key in item]
        batch[key] = _cat_images(rows, image_axis) if isinstance(rows[0], torch.Tensor) else rows
    return batch


def collate(items: list[dict[str, torch.Tensor]], pad_id: int, token_keys: Sequence[str],
            side: str = "right") -> dict[str, Any]:
    """Merge rendered samples (each with batch dim 1) into one batch.

    ``token_keys`` names the per-token tensors, padded along the sequence (``family.token_keys``);
    ``input_ids`` are padded with ``pad_id``, labels with -100, the rest with 0.
    """
    batch = join_per_sample(items, token_keys)
    for key in token_keys:
        if any(key in item for item in items):
            batch[key] = pad_tokens(per_token(items, key), _pad_value(key, pad_id), side)
    if "attention_mask" not in batch:
        lengths = [item["input_ids"].shape[-1] for item in items]
        batch["attention_mask"] = pad_tokens([torch.ones(1, n, dtype=torch.long) for n in lengths], 0, side)
    return batch
