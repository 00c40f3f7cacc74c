"""Group-relative advantages and group diagnostics for the GRPO family.

Rewards arrive flat, one per completion, laid out group-contiguously: completions
``[g*G, (g+1)*G)`` answer prompt ``g`` (G = ``group_size``). A NaN reward means "no
reward" (every reward function returned ``None``): it is left out of its group's
statistics and its advantage is 0, so it neither moves the baseline nor the policy.

Sources: GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300) for the group-normalised
advantage; Dr. GRPO (Liu et al. 2025, arXiv:2503.20783) for dropping the std; DAPO
(Yu et al. 2025, arXiv:2503.14476) for dynamic sampling of zero-spread groups; TRL's
``GRPOTrainer._generate_and_score_completions`` for the NaN and batch-scale conventions.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Scale = Literal["group", "batch", "none"]


def _as_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Reshape flat rewards (N,) to (num_groups, group_size), checking the layout."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group of one has no baseline), got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def _nan_mean_std(x: Tensor, dim: int | None = None) -> tuple[Tensor, Tensor]:
    """Mean and unbiased (Bessel-corrected) std over the non-NaN entries of ``x``.

    Reduces over ``dim`` (keeping it) or over everything. Where fewer than two values
    are valid the std is 0 and the mean of nothing is 0, so no NaN leaks out.
    """
    valid = ~torch.isnan(x)
    dims = tuple(range(x.dim())) if dim is None else (dim,)
    count = valid.sum(dims, keepdim=True)
    filled = torch.where(valid, x, 0.0)
    mean = filled.sum(dims, keepdim=True) / count.clamp(min=1)
    sq_dev = torch.where(valid, (x - mean) ** 2, 0.0).sum(dims, keepdim=True)
    std = torch.sqrt(sq_dev / (count - 1).clamp(min=1))
    return mean, torch.where(count > 1, std, torch.zeros_like(std))


def group_advantages(rewards: Tensor, group_size: int, scale: Scale = "group", eps: float = 1e-4) -> Tensor:
    """Group-relative advantages ``A_i = (r_i - mean_group(r)) / (std + eps)``.

    Args:
        rewards: (N,) with N = num_groups * group_size, group-contiguous; NaN = no reward.
        group_size: completions per prompt (G >= 2).
        scale: ``"group"`` divides by the group's std (GRPO outcome supervision, DeepSeekMath section 4.1.2);
            ``"batch"`` by the std of all valid rewards of the batch around the batch mean
            (TRL ``scale_rewards="batch"``; the centring stays per group); ``"none"``
            leaves the centred reward unscaled (Dr. GRPO, which drops the std because it
            up-weights too-easy and too-hard prompts).
        eps: added to the std, so zero-spread groups get advantage 0, not NaN.

    Returns:
        (N,) advantages, same dtype as ``rewards``; exactly 0 where the reward is NaN.

    The std is the *unbiased* one (divide by n - 1, ``torch.std``'s default), as in TRL's
    ``nanstd``: the GRPO papers do not say which, and matching TRL keeps the step size of
    recipes ported from TRL unchanged (for G=4 the two differ by a factor sqrt(4/3)).
    Fewer than two valid rewards gives std 0 (TRL gives NaN, then zeroes the advantage;
    the centred reward of a lone value is 0 either way, so results agree).
    """
    grouped = _as_groups(rewards, group_size)  # (num_groups, G)
    valid = ~torch.isnan(grouped)
    group_mean, group_std = _nan_mean_std(grouped, dim=1)  # (num_groups, 1) each
    centred = torch.where(valid, grouped - group_mean, 0.0)
    if scale == "group":
        centred = centred / (group_std + eps)
    elif scale == "batch":
        _, batch_std = _nan_mean_std(grouped)
        centred = centred / (batch_std + eps)
    elif scale != "none":
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return centred.reshape(-1)


def zero_spread_groups(rewards: Tensor, group_size: int, atol: float = 0.0) -> Tensor:
    """Groups that carry no learning signal: all valid rewards equal (within ``atol``).

    Used by dynamic sampling (DAPO, Yu et al. 2025, section 3.2), which drops such groups
    because their advantages are all 0. A group with fewer than two valid rewards counts
    as zero-spread too.

    Args:
        rewards: (N,) group-contiguous, NaN = no reward.
        group_size: completions per prompt.
        atol: largest max - min still counted as "equal".

    Returns:
        (num_groups,) bool, True where the group should be dropped.
    """
    grouped = _as_groups(rewards, group_size)
    valid = ~torch.isnan(grouped)
    hi = torch.where(valid, grouped, -torch.inf).amax(dim=1)
    lo = torch.where(valid, grouped, torch.inf).amin(dim=1)
    return (hi - lo) <= atol  # no valid value: -inf - inf <= atol, True


def distinct_fraction(completions: list[str], group_size: int) -> list[float]:
    """Share of distinct completions in each group (1.0 = all different), to watch for mode collapse.

    Args:
        completions: N strings, group-contiguous like the rewards.
        group_size: completions per prompt.

    Returns:
        num_groups floats in [1/G, 1]; strings are compared exactly.
    """
    if group_size < 1 or len(completions) % group_size:
        raise ValueError(f"{len(completions)} completions do not split into groups of {group_size}")
    return [
        len(set(completions[start : start + group_size])) / group_size
        for start in range(0, len(completions), group_size)
    ]
