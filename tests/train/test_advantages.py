"""Advantages and group diagnostics: hand-computed values, edge cases, and TRL's formula."""

import math

import pytest
import torch
from trl.trainer.utils import nanstd

from vlmtune.train.advantages import (distinct_fraction, group_advantages, group_spread, span_spread,
                                      zero_spread_groups)

NAN = float("nan")
EPS = 1e-4


# ----------------------------------------------------------------------------- hand-computed


def test_group_scale_hand_computed():
    # group [1, 0, 1, 0]: mean 0.5; unbiased std = sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.57735
    # group [3, 3, 3, 5]: mean 3.5; squares 0.25*3 + 2.25 = 3; std = sqrt(3/3) = 1
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 3.0, 3.0, 3.0, 5.0], dtype=torch.float64)
    a = 0.5 / (math.sqrt(1 / 3) + EPS)
    b = 0.5 / (1.0 + EPS)
    expected = torch.tensor([a, -a, a, -a, -b, -b, -b, 3 * b], dtype=torch.float64)
    torch.testing.assert_close(group_advantages(rewards, 4), expected)


def test_std_is_unbiased_not_population():
    # population std of [1, 0, 1, 0] is 0.5, which would give advantages of ~1.0
    adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 4)
    assert abs(adv[0].item() - 0.5 / (1 / 3) ** 0.5) < 1e-3
    assert abs(adv[0].item() - 1.0) > 0.1


def test_batch_scale_hand_computed():
    # groups [0, 1] and [2, 3]: centred by group mean -> [-0.5, 0.5, -0.5, 0.5]
    # batch std of [0, 1, 2, 3] around 1.5: sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = sqrt(5/3)
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    a = 0.5 / (math.sqrt(5 / 3) + EPS)
    expected = torch.tensor([-a, a, -a, a], dtype=torch.float64)
    torch.testing.assert_close(group_advantages(rewards, 2, scale="batch"), expected)


def test_none_scale_is_centred_reward():
    # Dr. GRPO: no std division. groups [0, 1] -> mean .5, [2, 6] -> mean 4
    adv = group_advantages(torch.tensor([0.0, 1.0, 2.0, 6.0]), 2, scale="none")
    torch.testing.assert_close(adv, torch.tensor([-0.5, 0.5, -2.0, 2.0]))


def test_nan_rewards_are_excluded_and_get_zero():
    # group [2, 4, NaN]: mean over valid = 3; unbiased std = sqrt((1 + 1) / 1) = sqrt(2)
    rewards = torch.tensor([2.0, 4.0, NAN], dtype=torch.float64)
    a = 1.0 / (math.sqrt(2) + EPS)
    expected = torch.tensor([-a, a, 0.0], dtype=torch.float64)
    torch.testing.assert_close(group_advantages(rewards, 3), expected)
    # batch scale ignores the NaN too: std of [2, 4] = sqrt(2)
    torch.testing.assert_close(group_advantages(rewards, 3, "batch"), expected)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_degenerate_groups_give_zero_not_nan(scale):
    rewards = torch.tensor([NAN, NAN, 1.0, NAN, 2.0, 2.0, 0.0, 1.0])  # all-NaN, one valid, zero spread, normal
    adv = group_advantages(rewards, 2, scale=scale)
    assert torch.isfinite(adv).all()
    assert (adv[:6] == 0).all()
    assert adv[6] < 0 < adv[7]


def test_all_nan_batch():
    assert (group_advantages(torch.full((4,), NAN), 2, "batch") == 0).all()


@pytest.mark.parametrize(
    ("rewards", "group_size"),
    [(torch.ones(4), 1), (torch.ones(5), 2), (torch.ones(2, 2), 2)],
    ids=["group_size_1", "ragged", "not_1d"],
)
def test_bad_layout_raises(rewards, group_size):
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size)


def test_bad_scale_raises():
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.ones(4), 2, scale="token")  # type: ignore[arg-type]


def test_zero_spread_groups():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, NAN, 3.0, NAN, NAN, 0.5, 0.5000001])
    torch.testing.assert_close(zero_spread_groups(rewards, 2), torch.tensor([True, False, True, True, False]))
    assert zero_spread_groups(rewards, 2, atol=1e-6)[4]
    with pytest.raises(ValueError):
        zero_spread_groups(rewards, 1)


def test_group_spread_by_hand():
    # groups: [1, 0, 1, 0] std sqrt(4 * 0.25 / 3) = 0.57735; [1, 1, 1, 1] 0; [0.7, NaN, 1, NaN] two
    # valid values, std |1 - 0.7| / sqrt(2) = 0.212132; [NaN, 0.5, NaN, NaN] one valid value, 0
    values = torch.tensor([1.0, 0.0, 1.0, 0.0, 1, 1, 1, 1, 0.7, NAN, 1.0, NAN, NAN, 0.5, NAN, NAN])
    assert group_spread(values, 4) == pytest.approx((0.5773503 + 0.0 + 0.2121320 + 0.0) / 4, abs=1e-6)
    assert group_spread(torch.zeros(0), 4) == 0.0
    # the components of a sum: Dr. GRPO advantages of the total are the sum of the components' centred values
    strategy, distortion = torch.tensor([1.0, 1, 0, 0]), torch.tensor([0.0, -0.3, 0, 0])
    torch.testing.assert_close(group_advantages(strategy + distortion, 4, "none"),
                               group_advantages(strategy, 4, "none") + group_advantages(distortion, 4, "none"))
    assert group_spread(distortion, 4) == pytest.approx(0.15)  # std of [0, -0.3, 0, 0] = 0.15
    with pytest.raises(ValueError, match="groups of 4"):
        group_spread(torch.ones(6), 4)


def test_span_spread_by_hand():
    # multi-turn groups of any size: [1, 0, 1] std sqrt((1/9 + 4/9 + 1/9) / 2) = 0.57735; [5] one value, 0;
    # [0.7, NaN, 1] two valid, 0.212132; 76 turns need not split into groups of 8
    values = torch.tensor([1.0, 0.0, 1.0, 5.0, 0.7, NAN, 1.0])
    assert span_spread(values, [(0, 3), (3, 4), (4, 7)]) == pytest.approx((0.5773503 + 0 + 0.2121320) / 3, abs=1e-6)
    assert span_spread(values, []) == 0.0
    # groups of G as spans: the same as group_spread
    even = torch.tensor([1.0, 0.0, 1.0, 0.0, 1, 1, 1, 1])
    assert span_spread(even, [(0, 4), (4, 8)]) == pytest.approx(group_spread(even, 4))


def test_zero_spread_agrees_with_zero_advantages():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (40,), generator=g).float()  # binary rewards: many all-0 / all-1 groups
    zero = zero_spread_groups(rewards, 4)
    assert zero.any() and not zero.all()
    adv = group_advantages(rewards, 4).view(-1, 4)
    assert torch.equal(zero, (adv == 0).all(dim=1))


def test_distinct_fraction():
    assert distinct_fraction(["a", "a", "b", "c", "x", "x"], 2) == [0.5, 1.0, 0.5]
    assert distinct_fraction(["a", "a ", "a", "a"], 4) == [0.5]  # exact comparison
    with pytest.raises(ValueError):
        distinct_fraction(["a", "b", "c"], 2)


# ----------------------------------------------------------------------------- TRL equivalence


def trl_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str) -> torch.Tensor:
    """TRL 1.16's advantage code, quoted from trl/trainer/grpo_trainer.py
    ``GRPOTrainer._generate_and_score_completions`` (multi_objective_aggregation=
    "sum_then_normalize", the default; lines 2765-2788 and the nan_to_num at 2806).
    It is inline in a 600-line method that generates text, so it cannot be called
    directly; ``nanstd`` is TRL's own."""
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
        std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    elif scale_rewards == "batch":
        std_rewards = nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def _random_rewards(seed: int, num_groups: int, group_size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(num_groups * group_size, generator=g, dtype=torch.float64)
    rewards[torch.rand(rewards.shape, generator=g) < 0.2] = NAN
    rewards[:group_size] = NAN  # an all-NaN group
    rewards[group_size : 2 * group_size - 1] = NAN  # a group with one valid reward
    rewards[2 * group_size : 3 * group_size] = 0.7  # a zero-spread group
    return rewards


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("group_size", [2, 4, 8])
def test_matches_trl(scale, seed, group_size):
    rewards = _random_rewards(seed, num_groups=6, group_size=group_size)
    ours = group_advantages(rewards, group_size, scale=scale)
    # Not 1e-12: TRL's nanstd computes Bessel's count / (count - 1) from int64 counts, which
    # torch divides in float32, so TRL's float64 advantages carry ~1e-8 relative error.
    torch.testing.assert_close(ours, trl_advantages(rewards, group_size, scale), rtol=1e-7, atol=1e-9)


def test_trl_comparison_can_fail():
    # the harness distinguishes scalings: ours with "group" is not TRL's "batch"
    rewards = _random_rewards(0, num_groups=6, group_size=4)
    assert not torch.allclose(group_advantages(rewards, 4, "group"), trl_advantages(rewards, 4, "batch"))
