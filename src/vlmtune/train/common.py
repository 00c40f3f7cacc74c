"""Pieces both engines use inside their loops: optimizer and schedule, the deterministic
batch stream, the step count and the progress bar (the run's lifecycle around the loop is
:mod:`vlmtune.train.run`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vlmtune.config import TrainConfig


def param_groups(model: torch.nn.Module, family: Any, train: TrainConfig) -> list[dict[str, Any]]:
    """Trainable parameters grouped by learning rate (vision tower may have its own) and
    weight decay (none on biases and norms, as is standard for AdamW)."""
    from vlmtune.models.families import part_of

    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        clean = name.replace("base_model.model.", "", 1)
        is_vision = family is not None and _safe_part(family, clean, part_of) == "vision"
        lr = train.vision_lr if (is_vision and train.vision_lr) else train.lr
        wd = train.weight_decay if p.dim() >= 2 else 0.0
        groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def _safe_part(family: Any, name: str, part_of: Any) -> str | None:
    try:
        return part_of(family, name)
    except ValueError:
        return None  # adapter / modules_to_save wrappers: trained at the base lr


def build_optimizer(model: torch.nn.Module, family: Any, train: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, family, train)
    if not groups:
        raise ValueError("no trainable parameters: check train.mode and the freeze section")
    params = [p for g in groups for p in g["params"]]
    # One fused kernel per step on CPU and CUDA: no parameter-sized temporaries (the foreach
    # default makes several, ~70 MB of peak memory at 25 M parameters) and fewer passes.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES for p in params)
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.adam_betas, fused=fused or None)


_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    warmup = train.warmup_steps or math.ceil(train.warmup_ratio * total_steps)
    name = "constant_with_warmup" if train.scheduler == "constant" else train.scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


@dataclass
class BatchStream:
    """Micro-batches of sample indices in a deterministic order.

    Epoch ``e`` visits the samples in a permutation seeded by ``seed + e``; with several
    processes, rank ``r`` takes every ``world``-th micro-batch. The position
    (``epoch``, ``cursor``) is saved in checkpoints, which makes resume exact.
    """

    n: int
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    rank: int = 0
    world: int = 1
    epoch: int = 0
    cursor: int = 0  # index of the next micro-batch within the epoch (global, all ranks)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        if getattr(self, "_cached", (None,))[0] != self.epoch:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
            self._cached = (self.epoch, perm.tolist())
        return self._cached[1]

    def next(self) -> list[int]:
        """The indices of this rank's next micro-batch."""
        if self.cursor + self.rank >= self.batches_per_epoch:
            self.epoch, self.cursor = self.epoch + 1, 0
        b = self.cursor + self.rank
        self.cursor += self.world
        order = self._order()
        return order[b * self.batch_size:(b + 1) * self.batch_size]

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}


def total_steps(train: TrainConfig, n_samples: int, world: int = 1) -> int:
    if train.max_steps > 0:
        return train.max_steps
    per_epoch = math.ceil(n_samples / train.batch_size)
    return max(1, math.ceil(train.epochs * per_epoch / (train.grad_accum * world)))


def progress_bar(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    disable=not enabled)
