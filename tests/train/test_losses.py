"""GRPO-family losses: hand-computed values, edge cases, and equality with TRL's _compute_loss."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl import GRPOTrainer

from vlmtune.registry import LOSSES
from vlmtune.train.losses import clipped_surrogate, kl_k1, kl_k3, policy_loss

LN = math.log
F64 = torch.float64


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


# ----------------------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_computed():
    # pi = 0.5, ref = 0.25: k1 = ln .5 - ln .25 = ln 2
    # k3 = exp(ln .25 - ln .5) - (ln .25 - ln .5) - 1 = 0.5 + ln 2 - 1 = 0.193147...
    logp, ref = t([[LN(0.5)]]), t([[LN(0.25)]])
    torch.testing.assert_close(kl_k1(logp, ref), t([[LN(2)]]))
    torch.testing.assert_close(kl_k3(logp, ref), t([[0.5 + LN(2) - 1]]))
    # pi = 0.25, ref = 0.5: k1 is negative (-ln 2), k3 = 2 - ln 2 - 1 stays positive
    torch.testing.assert_close(kl_k1(ref, logp), t([[-LN(2)]]))
    torch.testing.assert_close(kl_k3(ref, logp), t([[1 - LN(2)]]))


def test_kl_k3_is_nonnegative_and_zero_at_equality():
    g = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k3(logp, logp) == 0).all()


# ----------------------------------------------------------------------------- shared fixture: 2 sequences x 3 tokens
#
# old_logp = ln 0.5 everywhere; logp = old + ln(ratio), so the ratios are exact.
# seq 0, A = +1, ratios [1.0, 1.5, 0.5], all 3 tokens valid
#   clip(r, .8, 1.2) = [1.0, 1.2, 0.8]; min(r*A, clip*A) = [1.0, 1.2, 0.5] -> loss [-1.0, -1.2, -0.5]
#   token 1 is high-clipped (1.5 > 1.2, A > 0)
# seq 1, A = -2, ratios [1.1, 0.7, (2.0 padding)], 2 tokens valid
#   r*A = [-2.2, -1.4], clip*A = [-2.2, -1.6]; min = [-2.2, -1.6] -> loss [2.2, 1.6]
#   token 1 is low-clipped (0.7 < 0.8, A < 0)
RATIOS = [[1.0, 1.5, 0.5], [1.1, 0.7, 2.0]]
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADV = t([1.0, -2.0])


def fixture_logps():
    old = torch.full((2, 3), LN(0.5), dtype=F64)
    logp = (old + torch.log(t(RATIOS))).requires_grad_()
    return logp, old


def test_grpo_hand_computed():
    logp, old = fixture_logps()
    loss, stats = policy_loss("grpo", logp, old, ADV, MASK)
    # per-sequence means: (-1 - 1.2 - 0.5)/3 = -0.9 and (2.2 + 1.6)/2 = 1.9; batch mean = 0.5
    torch.testing.assert_close(loss, t(0.5))
    # 5 valid tokens: one high-clipped, one low-clipped; mean ratio (1 + 1.5 + .5 + 1.1 + .7)/5 = .96
    torch.testing.assert_close(stats["clip/high"], t(0.2))
    torch.testing.assert_close(stats["clip/low"], t(0.2))
    torch.testing.assert_close(stats["clip/region"], t(0.4))
    torch.testing.assert_close(stats["ratio/mean"], t(0.96))
    assert "kl" not in stats


def test_dr_grpo_hand_computed():
    logp, old = fixture_logps()
    loss, _ = policy_loss("dr_grpo", logp, old, ADV, MASK, max_completion_length=4)
    # token sum -2.7 + 3.8 = 1.1, over B * L = 2 * 4
    torch.testing.assert_close(loss, t(1.1 / 8))
    with pytest.raises(ValueError, match="max_completion_length"):
        policy_loss("dr_grpo", logp, old, ADV, MASK)


def test_dapo_hand_computed():
    logp, old = fixture_logps()
    loss, _ = policy_loss("dapo", logp, old, ADV, MASK)
    torch.testing.assert_close(loss, t(1.1 / 5))  # token sum over 5 valid tokens
    # under gradient accumulation the caller passes the step's token count
    loss, _ = policy_loss("dapo", logp, old, ADV, MASK, num_tokens=10)
    torch.testing.assert_close(loss, t(1.1 / 10))


def test_dapo_clip_higher():
    # ratio 1.25 with A = +1: symmetric eps .2 clips to 1.2; eps_high .28 leaves it at 1.25
    old = t([[0.0]])
    logp = old + LN(1.25)
    sym, _ = policy_loss("dapo", logp, old, t([1.0]), torch.ones(1, 1))
    asym, stats = policy_loss("dapo", logp, old, t([1.0]), torch.ones(1, 1), eps_low=0.2, eps_high=0.28)
    torch.testing.assert_close(sym, t(-1.2))
    torch.testing.assert_close(asym, t(-1.25))
    assert stats["clip/high"] == 0
    # eps_high=None means symmetric
    none, _ = policy_loss("dapo", logp, old, t([1.0]), torch.ones(1, 1), eps_high=None)
    torch.testing.assert_close(none, sym)


def test_gspo_hand_computed():
    logp, old = fixture_logps()
    loss, stats = policy_loss("gspo", logp, old, ADV, MASK)
    # s0 = (1 * 1.5 * 0.5)^(1/3) = 0.75^(1/3) = 0.90856, inside [.8, 1.2]: loss -0.90856
    # s1 = (1.1 * 0.7)^(1/2) = 0.77^(1/2) = 0.87750 (padding ignored), A = -2: loss 2 * 0.87750
    s0, s1 = 0.75 ** (1 / 3), 0.77**0.5
    torch.testing.assert_close(loss, t((-s0 + 2 * s1) / 2))
    torch.testing.assert_close(stats["ratio/mean"], t((s0 + s1) / 2))  # per sequence, like TRL
    # a clipped sequence: ratios [2, 2] -> s = 2, A = +1 -> clip to 1.2, loss -1.2, high-clipped
    old2 = torch.zeros(1, 2, dtype=F64)
    loss2, stats2 = policy_loss("gspo", old2 + LN(2), old2, t([1.0]), torch.ones(1, 2))
    torch.testing.assert_close(loss2, t(-1.2))
    torch.testing.assert_close(stats2["clip/high"], t(1.0))


def test_gspo_differs_from_grpo_on_same_tensors():
    logp, old = fixture_logps()
    grpo, _ = policy_loss("grpo", logp, old, ADV, MASK)
    gspo, _ = policy_loss("gspo", logp, old, ADV, MASK)
    assert abs(grpo.item() - gspo.item()) > 1e-2


def test_dual_clip_hand_computed():
    # c = 3. A = -1: ratio 5 -> clipped loss max(5, 1.2) = 5, capped at c*|A| = 3;
    #                ratio 2 -> loss 2 < 3, unchanged.  A = +1, ratio 5 -> -1.2, no dual clip.
    ratio = t([[5.0], [2.0], [5.0]])
    adv = t([[-1.0], [-1.0], [1.0]])
    plain, _ = clipped_surrogate(ratio, adv, 0.2, 0.2)
    dual, flags = clipped_surrogate(ratio, adv, 0.2, 0.2, dual_clip=3.0)
    torch.testing.assert_close(plain, t([[5.0], [2.0], [-1.2]]))
    torch.testing.assert_close(dual, t([[3.0], [2.0], [-1.2]]))
    assert flags["dual"].squeeze(-1).tolist() == [True, False, False]
    # through policy_loss (dapo over 3 one-token sequences): (3 + 2 - 1.2) / 3
    old = torch.zeros(3, 1, dtype=F64)
    logp = old + torch.log(ratio)
    loss, stats = policy_loss("dapo", logp, old, adv.squeeze(-1), torch.ones(3, 1), dual_clip=3.0)
    torch.testing.assert_close(loss, t(3.8 / 3))
    torch.testing.assert_close(stats["clip/dual"], t(1 / 3))


def test_kl_penalty_hand_computed():
    # ratios 1 and A = 0 make the surrogate 0, leaving beta * KL.
    # k3 per token: [0.5 + ln 2 - 1, 0]; grpo mean over the 2 tokens, times beta = 0.1
    logp = t([[LN(0.5), LN(0.5)]])
    ref = t([[LN(0.25), LN(0.5)]])
    k3 = 0.5 + LN(2) - 1
    loss, stats = policy_loss("grpo", logp, logp, t([0.0]), torch.ones(1, 2), ref_logp=ref, beta=0.1)
    torch.testing.assert_close(loss, t(0.1 * k3 / 2))
    torch.testing.assert_close(stats["kl"], t(k3 / 2))
    loss_k1, _ = policy_loss("grpo", logp, logp, t([0.0]), torch.ones(1, 2), ref_logp=ref, beta=0.1, kl="k1")
    torch.testing.assert_close(loss_k1, t(0.1 * LN(2) / 2))
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss("grpo", logp, logp, t([0.0]), torch.ones(1, 2), beta=0.1)


@pytest.mark.parametrize("name", LOSSES.names())
def test_all_masked_row_and_inf_padding(name):
    # row 1 has no valid token and -inf log-probs everywhere: it contributes 0 and no NaN
    logp = t([[-1.0, -2.0], [-math.inf, -math.inf]]).requires_grad_()
    old = t([[-1.1, -1.9], [-math.inf, -math.inf]])
    ref = t([[-1.2, -2.1], [-math.inf, -math.inf]])
    mask = torch.tensor([[1, 1], [0, 0]])
    adv = t([1.0, -1.0])
    loss, stats = policy_loss(name, logp, old, adv, mask, ref_logp=ref, beta=0.1, max_completion_length=2)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(v) for v in stats.values())
    assert torch.isfinite(logp.grad).all() and (logp.grad[1] == 0).all()
    # fully masked batch: loss 0, not NaN
    zero, _ = policy_loss(name, logp, old, adv, torch.zeros(2, 2), max_completion_length=2)
    assert zero.item() == 0.0


def test_bad_arguments_raise():
    logp, old = fixture_logps()
    with pytest.raises(ValueError, match="unknown loss"):
        policy_loss("ppo", logp, old, ADV, MASK)
    with pytest.raises(ValueError, match="KL"):
        policy_loss("grpo", logp, old, ADV, MASK, ref_logp=old, kl="k2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="advantages"):
        policy_loss("grpo", logp, old, ADV.unsqueeze(-1), MASK)


# ----------------------------------------------------------------------------- TRL equivalence
#
# TRL 1.16 computes every GRPO-family loss inside GRPOTrainer._compute_loss
# (trl/trainer/grpo_trainer.py lines 3020-3302). We call that method unbound, with a
# SimpleNamespace standing in for the trainer: it provides exactly the attributes the method
# reads, and a patched _get_per_token_logps_and_entropies that returns our log-probs instead
# of running a model. Accelerate collectives are identities (one process).

# our loss name -> (TRL loss_type, importance_sampling_level)
TRL_EQUIVALENT = {
    "grpo": ("grpo", "token"),
    "dr_grpo": ("dr_grpo", "token"),
    "dapo": ("dapo", "token"),
    "gspo": ("grpo", "sequence"),
}
# our stats key -> TRL metric name
TRL_METRICS = {
    "clip/low": "clip_ratio/low_mean",
    "clip/high": "clip_ratio/high_mean",
    "clip/region": "clip_ratio/region_mean",
    "kl": "kl",
}


def trl_loss(loss_type, level, logp, old, adv, mask, *, ref=None, beta=0.0, eps_low=0.2, eps_high=0.2,
             max_len=None, num_items=None, accumulation=1):  # fmt: skip
    """Run TRL's GRPOTrainer._compute_loss on our tensors; returns (loss, metrics)."""
    metrics = defaultdict(list)
    accelerator = SimpleNamespace(
        num_processes=1,
        reduce=lambda x, reduction="sum": x,
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        sync_gradients=True,
    )
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=accumulation),
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=accumulation,
        max_completion_length=max_len,
        accelerator=accelerator,
        _entropy_bonus_enabled=False,
        _metrics={"train": metrics},
    )
    batch, length = logp.shape
    inputs = {
        "prompt_ids": torch.zeros(batch, 1, dtype=torch.long),
        "prompt_mask": torch.ones(batch, 1, dtype=torch.long),
        "completion_ids": torch.zeros(batch, length, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum() if num_items is None else torch.tensor(num_items),
    }
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    return loss, {k: v[-1] for k, v in metrics.items()}


def random_batch(seed, batch=8, length=7, spread=0.6):
    """Log-probs with ratios spread across both clip edges; ragged lengths; one all-masked row."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=g, dtype=F64) * 3
    # a per-row shift as well, so GSPO's (averaged) sequence ratios also leave the clip range
    shift = torch.randn(batch, 1, generator=g, dtype=F64)
    logp = old + spread * (torch.randn(batch, length, generator=g, dtype=F64) + shift)
    ref = logp.detach() + 0.3 * torch.randn(batch, length, generator=g, dtype=F64)
    adv = torch.randn(batch, generator=g, dtype=F64)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[-1] = 0
    mask = (torch.arange(length) < lengths.unsqueeze(1)).long()
    return logp, old, ref, adv, mask


def _ours_and_trl(name, seed, beta, trl_name=None, **ours_kw):
    logp, old, ref, adv, mask = random_batch(seed)
    mine = logp.clone().requires_grad_()
    theirs = logp.clone().requires_grad_()
    loss_type, level = TRL_EQUIVALENT[trl_name or name]
    kw = dict(eps_low=0.2, eps_high=0.28)
    ours, stats = policy_loss(
        name, mine, old, adv, mask, ref_logp=ref, beta=beta, max_completion_length=9, **kw, **ours_kw
    )
    ref_loss, ref_metrics = trl_loss(
        loss_type, level, theirs, old, adv, mask, ref=ref, beta=beta, max_len=9, **kw
    )
    ours.backward()
    ref_loss.backward()
    return (ours, mine.grad, stats), (ref_loss, theirs.grad, ref_metrics)


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(TRL_EQUIVALENT))
def test_matches_trl_compute_loss(name, seed, beta):
    (ours, grad, stats), (ref_loss, ref_grad, ref_metrics) = _ours_and_trl(name, seed, beta)
    torch.testing.assert_close(ours, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)
    assert 0 < ref_metrics["clip_ratio/region_mean"] < 1  # the tensors really exercise clipping
    for key, trl_key in TRL_METRICS.items():
        if trl_key in ref_metrics:  # TRL's clip flags go through .float(): float32 precision
            assert stats[key].item() == pytest.approx(ref_metrics[trl_key], rel=1e-6, abs=1e-9)
    assert ("kl" in ref_metrics) == (beta != 0.0)


def test_matches_trl_dapo_under_gradient_accumulation():
    # TRL "dapo" divides a micro-batch's token sum by the generation batch's token count
    # (num_items_in_batch, rescaled by accumulation / steps_per_generation); ours takes it as num_tokens.
    logp, old, _, adv, mask = random_batch(3)
    num_items = int(mask.sum()) * 2  # this micro-batch is half of the optimiser step
    ours, _ = policy_loss("dapo", logp, old, adv, mask, num_tokens=num_items)
    theirs, _ = trl_loss("dapo", "token", logp, old, adv, mask, num_items=num_items, accumulation=2)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    bnpo, _ = trl_loss("bnpo", "token", logp, old, adv, mask)
    torch.testing.assert_close(policy_loss("dapo", logp, old, adv, mask)[0], bnpo, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(TRL_EQUIVALENT))
def test_trl_harness_tells_variants_apart(name):
    # each of our losses matches its TRL counterpart only: the comparison can fail
    for other in TRL_EQUIVALENT:
        if other == name:
            continue
        (ours, grad, _), (ref_loss, ref_grad, _) = _ours_and_trl(name, 0, 0.04, trl_name=other)
        assert not torch.allclose(grad, ref_grad), other


def test_trl_harness_catches_wrong_kl_estimator():
    # TRL uses k3; our k1 on the same tensors must not match
    (ours, _, _), (ref_loss, _, _) = _ours_and_trl("grpo", 0, 0.04, kl="k1")
    assert not torch.allclose(ours, ref_loss)


def test_sampler_mismatch_by_hand():
    """Trainer log-probs (-1, -2) vs the sampler's (-1, -1.5) on two valid tokens (the third is
    padding): ratios 1 and e^-0.5, so a mean of (1 + 0.60653) / 2; |diff| mean (0 + 0.5) / 2."""
    from vlmtune.train.losses import sampler_mismatch

    logp = torch.tensor([[-1.0, -2.0, 0.0]])
    sampling = torch.tensor([[-1.0, -1.5, 9.0]])
    mask = torch.tensor([[1, 1, 0]])
    stats = sampler_mismatch(logp, sampling, mask)
    assert float(stats["sampling/ratio_mean"]) == pytest.approx(0.803265, abs=1e-6)
    assert float(stats["sampling/abs_logp_diff"]) == pytest.approx(0.25)
    same = sampler_mismatch(logp, logp, mask)
    assert float(same["sampling/ratio_mean"]) == 1.0 and float(same["sampling/abs_logp_diff"]) == 0.0
