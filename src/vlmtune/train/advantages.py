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

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from vlmtune.registry import ADVANTAGE_SCALES


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


def group_std(grouped: Tensor, eps: float) -> Tensor:
    """``scale: group``: each group's std (GRPO outcome supervision, DeepSeekMath section 4.1.2)."""
    return _nan_mean_std(grouped, dim=1)[1] + eps


def batch_std(grouped: Tensor, eps: float) -> Tensor:
    """``scale: batch``: the std of all valid rewards of the batch around the batch mean (TRL
    ``scale_rewards="batch"``; the centring stays per group)."""
    return _nan_mean_std(grouped)[1] + eps


def no_scale(grouped: Tensor, eps: float) -> float:
    """``scale: none``: the centred reward unscaled (Dr. GRPO, which drops the std because it
    up-weights too-easy and too-hard prompts)."""
    return 1.0


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """Group-relative advantages ``A_i = (r_i - mean_group(r)) / scale``.

    Args:
        rewards: (N,) with N = num_groups * group_size, group-contiguous; NaN = no reward.
        group_size: completions per prompt (G >= 2).
        scale: what the centred rewards are divided by, a name of ``ADVANTAGE_SCALES``
            (:mod:`vlmtune.registry`): ``"group"`` (:func:`group_std`), ``"batch"``
            (:func:`batch_std`), ``"none"`` (:func:`no_scale`), or ``module:fn`` /
            ``file.py:fn`` called as ``fn(grouped (num_groups, G), eps)``.
        eps: added to the std, so zero-spread groups get advantage 0, not NaN.

    Returns:
        (N,) advantages, same dtype as ``rewards``; exactly 0 where the reward is NaN.

    The std is the *unbiased* one (divide by n - 1, ``torch.std``'s default), as in TRL's
    ``nanstd``: the GRPO papers do not say which, and matching TRL keeps the step size of
    recipes ported from TRL unchanged (for G=4 the two differ by a factor sqrt(4/3)).
    Fewer than two valid rewards gives std 0 (TRL gives NaN, then zeroes the advantage;
    the centred reward of a lone value is 0 either way, so results agree).
    """
    divide_by = ADVANTAGE_SCALES.get(scale)
    grouped = _as_groups(rewards, group_size)  # (num_groups, G)
    valid = ~torch.isnan(grouped)
    group_mean, _ = _nan_mean_std(grouped, dim=1)  # (num_groups, 1)
    centred = torch.where(valid, grouped - group_mean, 0.0)
    return (centred / divide_by(grouped, eps)).reshape(-1)


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


def group_spread(values: Tensor, group_size: int) -> float:
    """Mean over groups of the within-group std of ``values`` (unbiased, NaN left out; a group
    with fewer than two valid values counts 0).

    Applied to one component of a reward (e.g. the strategy part of a judge's score), it says
    how much of the group-relative signal that component carries: under Dr. GRPO the
    advantage is the sum of the components' centred values, so a component with no spread
    inside groups pushes the policy nowhere, however high or low its mean.
    """
    _, std = _nan_mean_std(_as_groups(values, group_size), dim=1)
    return float(std.mean()) if std.numel() else 0.0


def span_spread(values: Tensor, spans: Sequence[tuple[int, int]]) -> float:
    """:func:`group_spread` over groups of any size: ``values[start:end]`` of each span (in
    multi-turn RL a group is the turns that shared a prompt, however many there were)."""
    stds = [_nan_mean_std(values[start:end])[1] for start, end in spans]
    return float(torch.cat(stds).mean()) if stds else 0.0


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


# ----------------------------------------------------------------------------- multi-turn (GiGPO)


def episode_advantages(episode_scores: Tensor, group_size: int, episode_of_step: Tensor,
                       scale: str = "group", eps: float = 1e-4) -> Tensor:
    """Episode-level GRPO for multi-turn episodes: every step gets its episode's
    group-relative advantage.

    Episodes come in groups of ``group_size`` from the same initial state, group-contiguous;
    the advantage is exactly the single-turn formula (:func:`group_advantages`) with the
    episode's score (e.g. the task score) as the reward, so a one-step episode is a
    single-turn completion. A NaN score (an episode that failed for the environment's
    fault) gives its steps advantage 0 and stays out of its group's statistics.

    Args:
        episode_scores: (E,) score of each episode.
        group_size: episodes per initial state (G >= 2).
        episode_of_step: (S,) episode index of each step.

    Returns:
        (S,) advantages.
    """
    return group_advantages(episode_scores, group_size, scale, eps)[episode_of_step]


def discounted_returns(step_rewards: Tensor, episode_of_step: Tensor, gamma: float) -> Tensor:
    """Per-step discounted return ``R_t = r_t + gamma * R_{t+1}`` within each episode.

    Args:
        step_rewards: (S,) reward of each step, steps of one episode in time order.
        episode_of_step: (S,) episode index of each step; an episode's steps need not be
            contiguous, only in time order among themselves.
        gamma: discount in [0, 1].

    Returns:
        (S,) returns (GiGPO, Feng et al. 2025, arXiv:2505.10978, Eq. 5).
    """
    if step_rewards.shape != episode_of_step.shape or step_rewards.dim() != 1:
        raise ValueError(f"expected two (S,) tensors, got {tuple(step_rewards.shape)} and "
                         f"{tuple(episode_of_step.shape)}")
    returns = torch.zeros_like(step_rewards)
    running: dict[int, float] = {}
    for i in reversed(range(step_rewards.numel())):
        ep = int(episode_of_step[i])
        running[ep] = float(step_rewards[i]) + gamma * running.get(ep, 0.0)
        returns[i] = running[ep]
    return returns


def anchor_groups(anchors: list, group_of_step: Tensor) -> Tensor:
    """Step-group ids: steps of the same episode group whose anchor observations are equal.

    Args:
        anchors: S hashable anchor observations (e.g. a hash of the rendered state).
        group_of_step: (S,) episode-group index of each step (episodes from one initial state).

    Returns:
        (S,) long ids, 0..num_step_groups-1 in order of first appearance.
    """
    ids: dict[tuple, int] = {}
    out = [ids.setdefault((int(g), a), len(ids)) for g, a in zip(group_of_step.tolist(), anchors)]
    return torch.tensor(out, dtype=torch.long)


def step_advantages(returns: Tensor, step_group: Tensor, norm: Literal["mean", "mean_std"] = "mean",
                    eps: float = 1e-4) -> Tensor:
    """Step-level relative advantage within anchor-state groups (GiGPO Eq. 7).

    ``A_S = R_t - mean_group(R)`` (``mean``) or divided by the group's unbiased std + eps
    (``mean_std``). A singleton group gets 0: its own mean is its value.

    Args:
        returns: (S,) discounted step returns.
        step_group: (S,) anchor-group ids from :func:`anchor_groups`.
    """
    if norm not in ("mean", "mean_std"):
        raise ValueError(f"norm must be 'mean' or 'mean_std', got {norm!r}")
    n_groups = int(step_group.max()) + 1 if step_group.numel() else 0
    count = torch.zeros(n_groups, dtype=returns.dtype).index_add_(0, step_group, torch.ones_like(returns))
    mean = torch.zeros(n_groups, dtype=returns.dtype).index_add_(0, step_group, returns) / count
    centred = returns - mean[step_group]
    if norm == "mean":
        return centred
    sq = torch.zeros(n_groups, dtype=returns.dtype).index_add_(0, step_group, centred**2)
    std = torch.where(count > 1, torch.sqrt(sq / (count - 1).clamp(min=1)), torch.ones_like(sq))
    return centred / (std[step_group] + eps)


def gigpo_advantages(episode_scores: Tensor, group_size: int, episode_of_step: Tensor, step_rewards: Tensor,
                     anchors: list, *, gamma: float = 0.95, omega: float = 1.0,
                     norm: Literal["mean", "mean_std"] = "mean", eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """GiGPO advantage of every step: episode-level group advantage + ``omega`` x step-level one.

    Episodes come in groups of ``group_size`` from the same initial state, group-contiguous
    (episode ``e`` belongs to group ``e // group_size``). The episode-level part is the
    single-turn GRPO formula over episode scores (:func:`group_advantages`; ``mean`` =
    no std scaling, ``mean_std`` = scaled), given to each of the episode's steps; the step-level
    part compares steps of one group that saw the same anchor observation
    (:func:`step_advantages` over :func:`discounted_returns`). Source: Feng et al. 2025,
    "Group-in-Group Policy Optimization for LLM Agent Training", arXiv:2505.10978, Eq. 3-8;
    verl-agent's ``core_gigpo`` for the singleton convention.

    Args:
        episode_scores: (E,) score of each episode (e.g. the task score), E = groups x G.
        group_size: episodes per initial state (G >= 2).
        episode_of_step: (S,) episode index of each step, time order within an episode.
        step_rewards: (S,) environment reward of each step.
        anchors: S hashable anchor observations.

    Returns:
        ``(advantages (S,), step_group (S,))``; the group ids give the anchor-group sizes to log.
    """
    episode_adv = group_advantages(episode_scores, group_size, "none" if norm == "mean" else "group", eps)
    group_of_step = episode_of_step // group_size
    step_group = anchor_groups(anchors, group_of_step)
    returns = discounted_returns(step_rewards, episode_of_step, gamma)
    return episode_adv[episode_of_step] + omega * step_advantages(returns, step_group, norm, eps), step_group
