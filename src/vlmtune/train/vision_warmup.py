"""Warm up a VLM's vision tower on per-token labels before any language training.

Every real VLM starts from a pretrained vision encoder (CLIP, SigLIP, ...) whose patch
features already tell shapes and colours apart. A tiny VLM built from random weights does
not, and SFT alone is slow to teach it: the language model only learns to attend to the
image tokens of the asked object once those tokens carry the object's kind, and they only
learn to carry it once it attends to them (measured on the clarify task: after 12,800 SFT
samples without it the colour of the asked shape was still at chance). This breaks the
loop the way a pretrained encoder does: linear heads on the projector's output tokens (the
tokens the language model reads) are trained with the vision tower and projector on
per-token labels (e.g. each grid cell's shape type and colour from a synthetic scene's
facts), for a few hundred steps; the heads are then thrown away. No text, question, level or answer is used.

Written here rather than taken from a library because it needs the family's own vision
forward, which no trainer exposes: the module at the family table's vision prefix, run on
the image processor's patches and ``image_grid_thw`` and returning the merged tokens (the
Qwen-VL families, whose tower holds its merger/projector).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from vlmtune.models.families import Family, family_for, part_of
from vlmtune.train.common import progress_bar

TokenLabels = Callable[[int, int, int], Sequence[Sequence[int]]]
"""``labels(i, rows, cols)`` -> for image ``i``, one list of ``rows * cols`` class ids per
head, in row-major order of the merged image tokens."""


def vision_tower(model: Any, family: Family) -> Any:
    """The module at the family's vision prefix, if it merges patches into the language
    model's tokens itself (``spatial_merge_size``, as the Qwen-VL towers do)."""
    visual = family.module(model, "vision")
    if not hasattr(visual, "spatial_merge_size"):
        raise ValueError(f"vision warm-up supports the Qwen-VL families (a vision tower that merges patches "
                         f"itself, with `spatial_merge_size`); {family.name}'s {family.vision} has none")
    return visual


def vision_parameters(model: Any, family: Family) -> list[torch.nn.Parameter]:
    """The parameters of the vision tower and the projector, as the family table splits them."""
    return [p for name, p in model.named_parameters() if part_of(family, name) != "language"]


def warm_up_vision(model: Any, processor: Any, images: Sequence[Any], labels: TokenLabels,
                   num_classes: Sequence[int], *, steps: int, batch_size: int = 32, lr: float = 1e-3,
                   seed: int = 0, show_progress: bool = True) -> dict[str, Any]:
    """Train ``model``'s vision tower and projector in place on per-token labels.

    Args:
        model: A Qwen-VL model (its language-model parameters are not touched).
        processor: Its processor (``processor.image_processor`` cuts the patches).
        images: Training images (PIL images or anything the image processor takes).
        labels: Per-token labels of image ``i`` for a ``rows`` × ``cols`` grid of merged tokens.
        num_classes: Classes of each label head (e.g. ``(7, 8)``: 6 types + empty, 7 colours + empty).
        steps: Optimizer steps; batch_size: images per step; lr: AdamW learning rate.

    Returns:
        ``{"steps", "loss", "accuracy": [per head, on the last 10 steps' batches]}``.
    """
    if steps < 1 or not images:
        raise ValueError("vision warm-up needs steps >= 1 and at least one image")
    family = family_for(model)
    visual = vision_tower(model, family)
    merge = visual.spatial_merge_size
    width = model.config.text_config.hidden_size
    heads = torch.nn.Linear(width, sum(num_classes))
    params = vision_parameters(model, family) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    visual.train()
    hits: list[list[float]] = [[] for _ in num_classes]
    loss_value = float("nan")
    with progress_bar(show_progress) as bar:
        task = bar.add_task("vision warm-up", total=steps, info="")
        for step in range(steps):
            chosen = [rng.randrange(len(images)) for _ in range(min(batch_size, len(images)))]
            enc = processor.image_processor(images=[images[i] for i in chosen], return_tensors="pt")
            grid = enc["image_grid_thw"]
            tokens = visual(enc["pixel_values"].to(visual.dtype), grid_thw=grid).pooler_output
            logits = heads(tokens)
            targets = [[] for _ in num_classes]
            for i, (_, h, w) in zip(chosen, grid.tolist()):
                for k, row in enumerate(labels(i, h // merge, w // merge)):
                    targets[k].extend(row)
            loss, start = 0.0, 0
            for k, n in enumerate(num_classes):
                target = torch.tensor(targets[k])
                part = logits[:, start:start + n]
                loss = loss + F.cross_entropy(part, target)
                if step >= steps - 10:
                    hits[k].append((part.argmax(-1) == target).float().mean().item())
                start += n
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss.item()
            bar.update(task, advance=1, info=f"loss {loss_value:.3f}")
    return {"steps": steps, "loss": loss_value, "accuracy": [sum(h) / len(h) for h in hits]}
