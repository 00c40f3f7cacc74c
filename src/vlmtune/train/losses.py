"""GRPO-family policy losses and KL estimators, as pure tensor functions.

Every loss is the same pipeline, and the registry ``LOSSES`` says how each variant fills
it in:

1. importance ratio, per token (GRPO, Dr. GRPO, DAPO) or per sequence (GSPO);
2. clipped surrogate ``-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)``
   (PPO, Schulman et al. 2017), optionally dual-clipped for A < 0;
3. plus ``beta * KL`` per token against the reference policy;
4. reduction over tokens and sequences, which is where the variants differ most.

Shapes: ``logp``, ``old_logp``, ``ref_logp``, ``mask`` are (B, T) over completion tokens
(``mask`` 1/True at tokens that count); ``advantages`` is (B,). The reference
implementation is TRL's ``GRPOTrainer._compute_loss`` (trl 1.16); tests check equality.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from vlmtune.registry import KL_ESTIMATORS, LOSSES, RegistryError



# ----------------------------------------------------------------------------- KL estimators


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k1 estimator of KL(pi || ref): ``logp - ref_logp``.

    Unbiased for samples from pi but high-variance and can be negative
    (Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html).
    Shapes: (B, T) in, (B, T) out.
    """
    return logp - ref_logp


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi || ref): ``exp(ref - logp) - (ref - logp) - 1``.

    Unbiased, never negative, low variance (Schulman 2020, same note as ``kl_k1``); the
    estimator GRPO uses (DeepSeekMath eq. 4) and TRL's only one. Shapes: (B, T) in and out.
    """
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1




# ----------------------------------------------------------------------------- reductions


def _zero_pad(x: Tensor, mask: Tensor) -> Tensor:
    # torch.where rather than x * mask: padding may hold inf/NaN log-probs, and NaN * 0 = NaN.
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    zeroed = _zero_pad(x, mask)
    return zeroed.sum() if dim is None else zeroed.sum(dim)


def reduce_sequence_mean(per_token: Tensor, mask: Tensor, **_: object) -> Tensor:
    """Mean over each sequence's tokens, then mean over the B sequences (scalar).

    GRPO as in DeepSeekMath eq. 3 (``1/G sum_i 1/|o_i| sum_t``) and TRL ``loss_type="grpo"``.
    A row with no valid token contributes 0 but still counts in B, as in TRL.
    """
    per_seq = _masked_sum(per_token, mask, dim=-1) / mask.sum(-1).clamp(min=1)
    return per_seq.mean()


def reduce_constant(
    per_token: Tensor, mask: Tensor, *, max_completion_length: int | None = None, **_: object
) -> Tensor:
    """Sum over all valid tokens divided by the constant ``B * max_completion_length`` (scalar).

    Dr. GRPO (Liu et al. 2025, arXiv:2503.20783): a length-independent
    normaliser removes GRPO's length bias. TRL ``loss_type="dr_grpo"``.
    """
    if max_completion_length is None:
        raise ValueError("loss 'dr_grpo' needs max_completion_length (its constant normaliser)")
    return _masked_sum(per_token, mask) / (per_token.size(0) * max_completion_length)


def reduce_token_mean(
    per_token: Tensor, mask: Tensor, *, num_tokens: Tensor | float | None = None, **_: object
) -> Tensor:
    """Sum over all valid tokens divided by a token count (scalar).

    DAPO token-level policy-gradient loss (Yu et al. 2025, arXiv:2503.14476, section 3.3). ``num_tokens``
    defaults to the valid tokens of this batch (TRL ``"bnpo"``, and TRL ``"dapo"`` when one
    micro-batch makes the step). Under gradient accumulation pass the valid-token count of
    the whole optimiser step, so the micro-batch losses sum to the exact token mean —
    TRL ``"dapo"``'s ``num_items_in_batch`` normaliser.
    """
    count = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, device=per_token.device)
    return _masked_sum(per_token, mask) / count.clamp(min=1)


@dataclass(frozen=True)
class LossSpec:
    """How one GRPO variant fills in the shared pipeline."""

    ratio_level: Literal["token", "sequence"]
    reduce: Callable[..., Tensor]
    source: str


# The built-in variants; ``vlmtune.registry.LOSSES`` names them (``grpo``, ``dr_grpo``, ``dapo``,
# ``gspo``), and a user's own ``LossSpec`` is named by ``module:attr`` / ``file.py:attr``.
GRPO = LossSpec("token", reduce_sequence_mean, "DeepSeekMath arXiv:2402.03300; TRL loss_type='grpo'")
DR_GRPO = LossSpec("token", reduce_constant, "Dr. GRPO arXiv:2503.20783; TRL loss_type='dr_grpo'")
DAPO = LossSpec("token", reduce_token_mean, "DAPO arXiv:2503.14476; TRL loss_type='dapo'/'bnpo'")
GSPO = LossSpec("sequence", reduce_sequence_mean,
                "GSPO arXiv:2507.18071; TRL loss_type='grpo', importance_sampling_level='sequence'")


def loss_spec(name: str | LossSpec) -> LossSpec:
    """The :class:`LossSpec` named by ``name`` (a built-in, ``module:attr`` or ``file.py:attr``)."""
    spec = name if isinstance(name, LossSpec) else LOSSES.get(name)
    if not isinstance(spec, LossSpec):
        raise RegistryError(f"loss {name!r} is a {type(spec).__name__}, not a vlmtune.train.losses.LossSpec")
    return spec


# ----------------------------------------------------------------------------- pipeline pieces


def log_importance_ratio(
    logp: Tensor, old_logp: Tensor, mask: Tensor, level: Literal["token", "sequence"]
) -> Tensor:
    """Log importance ratio: (B, T) per token, or (B, 1) per sequence.

    Sequence level is GSPO's length-normalised ratio ``log s_i = mean_t (logp - old_logp)``
    over valid tokens (Zheng et al. 2025, arXiv:2507.18071; TRL ``importance_sampling_level="sequence"``).
    Masked positions get log-ratio 0.
    """
    log_ratio = _zero_pad(logp - old_logp, mask)
    if level == "token":
        return log_ratio
    return (log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)).unsqueeze(-1)


def clipped_surrogate(
    ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float, dual_clip: float | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate loss with asymmetric clip and optional dual clip.

    ``loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)`` (PPO, Schulman
    et al. 2017, eq. 7; "clip-higher" eps_high > eps_low from DAPO section 3.1). With
    ``dual_clip = c > 1``, for A < 0 the loss is further capped at ``c * |A|``
    (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL", AAAI,
    arXiv:1912.09729, dual-clip PPO; same form as veRL's ``clip_ratio_c``): a huge ratio on a
    negative-advantage token can no longer blow up the loss.

    Args:
        ratio: (B, T) or (B, 1) importance ratios.
        advantages: (B, 1), broadcast over the ratio.

    Returns:
        Per-element loss shaped like ``ratio``, and bool masks ``low``/``high`` (the clip is
        active), ``dual`` (the dual clip is active), all shaped like ``ratio``.
    """
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    negative = advantages < 0
    flags = {
        "low": (ratio < 1 - eps_low) & negative,
        "high": (ratio > 1 + eps_high) & (advantages > 0),
    }
    if dual_clip is not None:
        cap = -dual_clip * advantages  # = c * |A| where A < 0
        flags["dual"] = negative & (loss > cap)
        loss = torch.where(negative, torch.minimum(loss, cap), loss)
    return loss, flags


def _stats(ratio: Tensor, mask: Tensor, flags: dict[str, Tensor], kl: Tensor | None) -> dict[str, Tensor]:
    """Detached scalar diagnostics, averaged like TRL's: over valid tokens, or over
    sequences when the ratio is per sequence."""

    def mean(x: Tensor) -> Tensor:
        x = x.detach().to(ratio.dtype)
        if x.size(-1) == 1:
            return x.mean()
        return _masked_sum(x, mask) / mask.sum().clamp(min=1)

    stats = {f"clip/{name}": mean(flag) for name, flag in flags.items()}
    stats["clip/region"] = mean(flags["low"] | flags["high"])
    stats["ratio/mean"] = mean(ratio)
    if kl is not None:
        stats["kl"] = mean(kl)
    return stats


def sampler_mismatch(logp: Tensor, sampling_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """How far the trainer's policy is from the one that sampled the tokens (a generation
    server's), on the sampled tokens: the mean over valid tokens of the importance ratio
    ``exp(logp - sampling_logp)`` and of ``|logp - sampling_logp|``. 1 and 0 when the two
    agree (the weights were synced and both compute alike); never part of the loss, whose
    log-probs the trainer computes itself."""
    mask = mask.bool()
    diff = _zero_pad(logp.detach().float() - sampling_logp.float(), mask)
    n = mask.sum().clamp(min=1)
    return {"sampling/ratio_mean": _masked_sum(diff.exp(), mask) / n,
            "sampling/abs_logp_diff": _masked_sum(diff.abs(), mask) / n}


# ----------------------------------------------------------------------------- entry point


def policy_loss(
    name: str | LossSpec,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    kl: str = "k3",
    eps_low: float = 0.2,
    eps_high: float | None = 0.2,
    dual_clip: float | None = None,
    max_completion_length: int | None = None,
    num_tokens: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO-family policy loss (scalar, to minimise) and detached diagnostics.

    Args:
        name: a loss of ``vlmtune.registry.LOSSES`` (``grpo``, ``dr_grpo``, ``dapo``, ``gspo``,
            or ``module:attr`` of a :class:`LossSpec`), or the spec itself.
        logp: (B, T) current-policy log-probs of the sampled completion tokens (with grad).
        old_logp: (B, T) log-probs under the policy that sampled them (no grad).
        advantages: (B,) one advantage per completion.
        mask: (B, T) 1/True at tokens that count.
        ref_logp: (B, T) reference-policy log-probs; needed when ``beta > 0``.
        beta: KL coefficient; the per-token ``beta * KL`` is added before reduction (as TRL does).
        kl: KL estimator of ``vlmtune.registry.KL_ESTIMATORS``, ``k1`` or ``k3`` (TRL uses k3).
        eps_low, eps_high: clip range ``[1 - eps_low, 1 + eps_high]``; ``eps_high=None`` = eps_low.
        dual_clip: dual-clip constant c > 1, or None.
        max_completion_length: normaliser constant of ``dr_grpo``.
        num_tokens: token count ``dapo`` divides by; default the valid tokens of this batch.

    Returns:
        ``(loss, stats)``; stats holds ``clip/low``, ``clip/high``, ``clip/region`` (and
        ``clip/dual``) fractions, ``ratio/mean``, and ``kl`` when ``ref_logp`` is given.
    """
    spec = loss_spec(name)
    kl_estimator = KL_ESTIMATORS.get(kl)
    if beta != 0.0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp")
    if advantages.shape != logp.shape[:1] or mask.shape != logp.shape:
        raise ValueError(
            f"expected advantages (B,) and mask (B, T) for logp {tuple(logp.shape)}, "
            f"got {tuple(advantages.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.bool()
    eps_high = eps_low if eps_high is None else eps_high

    ratio = torch.exp(log_importance_ratio(logp, old_logp, mask, spec.ratio_level))
    per_token, flags = clipped_surrogate(ratio, advantages.unsqueeze(-1), eps_low, eps_high, dual_clip)
    kl_per_token = None
    if ref_logp is not None:
        # Zero padding *before* the estimator: exp() of a padded -inf would give NaN gradients.
        kl_per_token = kl_estimator(_zero_pad(logp, mask), _zero_pad(ref_logp, mask))  # (B, T)
        if beta != 0.0:
            per_token = per_token + beta * kl_per_token  # (B, 1) broadcasts to (B, T) for gspo
    loss = spec.reduce(per_token, mask, max_completion_length=max_completion_length, num_tokens=num_tokens)
    return loss, _stats(ratio, mask, flags, kl_per_token)
