"""GRPO-family reinforcement learning: a loop you can read top to bottom.

Each step is the dataflow, each phase timed (``time/<phase>`` in the metrics):

    gen     sample prompts, generate G completions each (the policy itself samples)
    reward  score every completion with the recipe's reward functions
    adv     group-relative advantages; groups with no reward spread counted (and dropped
            with dynamic sampling, refilled up to ``grpo.max_refill`` extra rounds)
    old     log-probs of the sampling policy (only when ``num_iterations`` > 1)
    ref     reference log-probs for the KL term (only when ``beta`` > 0; under LoRA the
            reference is the base with adapters disabled, no second copy)
    update  ``num_iterations`` optimizer steps on the batch, one group per forward

The math lives in :mod:`vlmtune.train.losses` and :mod:`vlmtune.train.advantages`; the
lifecycle around the loop (run dir, resume, checkpoints, final save, skipped rows) is
:class:`vlmtune.train.run.Run`, shared with SFT. With a recipe ``env:`` section the
generation phase plays multi-turn episodes instead (:mod:`vlmtune.train.multiturn`:
``rollout`` then ``adv``); every turn becomes a completion of the batch with its own
advantage, and the rest of the step is the same.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
from accelerate import Accelerator
from rich.console import Console

from vlmtune.batching.dataset import load_prompts
from vlmtune.batching.render import render_prompt
from vlmtune.config import ConfigError, Recipe
from vlmtune.data.report import BadRows
from vlmtune.flops import Units, batch_units
from vlmtune.models.loading import load_for_training
from vlmtune.rewards.registry import RewardSet
from vlmtune.rollout.generator import Generator, SamplingParams, build_generator
from vlmtune.rollout.hf import Rollout, rollout_logps, sample_groups, stop_and_pad_ids
from vlmtune.tracking import ComputeMeter, PhaseTimer
from vlmtune.train.advantages import (
    distinct_fraction,
    group_advantages,
    span_spread,
    zero_spread_groups,
)
from vlmtune.train.common import BatchStream, build_optimizer, build_scheduler, progress_bar
from vlmtune.train.distributed import Layout
from vlmtune.train.losses import loss_spec, policy_loss, reduce_token_mean, sampler_mismatch
from vlmtune.train.multiturn import GENERATION_BATCH, EpisodeCollector, check_env_recipe, initial_states
from vlmtune.train.run import Run

COLLAPSE_WARNING = 0.5  # mean share of distinct completions per group below which we warn


@dataclass
class Batch:
    """One generation batch: rollouts with their rewards and advantages.

    Rollout ``i`` holds G completions of one prompt (multi-turn: the turns that shared a
    prompt, any number); ``rewards`` and ``advantages`` are flat over all completions.
    """

    rollouts: list[Rollout]
    rewards: torch.Tensor  # (N,) weighted total, NaN = no reward
    per_fn: torch.Tensor  # (N, K)
    advantages: torch.Tensor  # (N,)
    zero_spread: int  # groups whose rewards were all equal (before any drop)
    dropped: int = 0
    extras: dict[str, list] = field(default_factory=dict)  # rewards' log_extra columns, (N,) each
    metrics: dict[str, float] = field(default_factory=dict)  # multi-turn: episode statistics

    def spans(self) -> list[tuple[int, int]]:
        """``(start, end)`` of each rollout's completions in the flat tensors."""
        out, start = [], 0
        for r in self.rollouts:
            out.append((start, start + r.completion_ids.shape[0]))
            start = out[-1][1]
        return out


def data_columns(samples: list[Any]) -> list[str]:
    """The data set's columns as rewards see them: ``images`` and every ``meta`` field."""
    return ["images", *sorted({k for s in samples for k in s.meta} - {"images", "completion_ids"})]


def reward_columns(rollouts: list[Rollout], g: int) -> tuple[list, list, dict[str, list]]:
    """TRL's reward inputs: conversational prompts (the sample's messages without a final
    reference answer) and completions (``[{"role": "assistant", "content": text}]``), every
    data column repeated per completion, and ``completion_ids`` (token ids, as TRL passes
    them; length rewards count tokens with it)."""
    prompts, completions, columns = [], [], {"completion_ids": []}
    keys = data_columns([r.sample for r in rollouts])
    for r in rollouts:
        msgs = r.sample.messages
        prompt = msgs[:-1] if msgs and msgs[-1]["role"] == "assistant" else msgs
        for text, ids, mask in zip(r.texts, r.completion_ids, r.mask):
            prompts.append(prompt)
            completions.append([{"role": "assistant", "content": text}])
            columns["completion_ids"].append(ids[mask.bool()].tolist())
        row = {**r.sample.meta, "images": r.sample.images}
        for k in keys:
            columns.setdefault(k, []).extend([row.get(k)] * g)
    return prompts, completions, columns


def score(rewards: RewardSet, rollouts: list[Rollout], g: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    prompts, completions, columns = reward_columns(rollouts, g)
    return rewards.score(prompts, completions, columns)


def make_batch(rollouts: list[Rollout], rewards: RewardSet, cfg: Any) -> Batch:
    per_fn, total, _ = score(rewards, rollouts, cfg.num_generations)
    flat = zero_spread_groups(total, cfg.num_generations)
    adv = group_advantages(total, cfg.num_generations, cfg.scale, cfg.adv_eps)
    return Batch(rollouts, total, per_fn, adv, int(flat.sum()), extras=rewards.pop_extras())


def drop_flat_groups(batch: Batch, g: int) -> Batch:
    """Dynamic sampling (DAPO): keep only groups whose rewards differ."""
    keep = ~zero_spread_groups(batch.rewards, g)
    idx = torch.arange(len(batch.rollouts))[keep]
    tok = torch.cat([torch.arange(i * g, (i + 1) * g) for i in idx.tolist()]) if len(idx) else torch.zeros(0, dtype=torch.long)
    extras = {k: [v[i] for i in tok.tolist() if i < len(v)] for k, v in batch.extras.items()}
    return Batch([batch.rollouts[i] for i in idx.tolist()], batch.rewards[tok], batch.per_fn[tok],
                 batch.advantages[tok], batch.zero_spread, batch.dropped + int((~keep).sum()), extras)


def merge(a: Batch, b: Batch) -> Batch:
    extras = {k: a.extras.get(k, [None] * len(a.rewards)) + b.extras.get(k, [None] * len(b.rewards))
              for k in {**a.extras, **b.extras}}
    return Batch(a.rollouts + b.rollouts, torch.cat([a.rewards, b.rewards]), torch.cat([a.per_fn, b.per_fn]),
                 torch.cat([a.advantages, b.advantages]), a.zero_spread + b.zero_spread, a.dropped + b.dropped,
                 extras)


@contextlib.contextmanager
def reference_mode(model: Any, ref_model: Any | None):
    """Yield the reference policy: a frozen copy (full fine-tuning) or the base with
    adapters disabled (LoRA)."""
    if ref_model is not None:
        yield ref_model
    else:
        with model.disable_adapter():
            yield model


@torch.no_grad()
def group_logps(model: Any, batch: Batch, logps: Callable) -> list[torch.Tensor]:
    return [logps(model, r)[0].detach() for r in batch.rollouts]


def update(model: Any, batch: Batch, old: list[torch.Tensor] | None, ref: list[torch.Tensor] | None,
           recipe: Recipe, logps: Callable, accelerator: Accelerator) -> dict[str, float]:
    """One optimizer step's gradients over the whole batch, one group per forward.

    Chunk losses are weighted so their sum equals the loss of the whole batch: by the
    chunk's share of sequences, or for token-mean losses by the step's token count.
    """
    cfg = recipe.grpo
    token_mean = loss_spec(cfg.loss).reduce is reduce_token_mean
    total_tokens = sum(int(r.mask.sum()) for r in batch.rollouts)
    n_seq = len(batch.advantages)
    sums: dict[str, float] = {}
    for i, (r, (lo, hi)) in enumerate(zip(batch.rollouts, batch.spans())):
        logp, entropy = logps(model, r, with_entropy=True)
        mask = r.mask.to(logp.device)
        loss, stats = policy_loss(
            cfg.loss, logp, (old[i] if old else logp.detach()), batch.advantages[lo:hi].to(logp.device),
            mask, ref_logp=ref[i] if ref else None, beta=cfg.beta, kl=cfg.kl, eps_low=cfg.eps_low,
            eps_high=cfg.eps_high, dual_clip=cfg.dual_clip, max_completion_length=cfg.max_new_tokens,
            num_tokens=total_tokens if token_mean else None)
        if r.sampling_logp is not None:  # sampled elsewhere (a server): how far its policy is from ours
            stats.update(sampler_mismatch(logp, r.sampling_logp.to(logp.device), mask))
        weight = 1.0 if token_mean else (hi - lo) / n_seq
        with accelerator.no_sync(model):  # ranks may hold different numbers of groups
            accelerator.backward(loss * weight)
        stats["loss"] = loss.detach() * weight * len(batch.rollouts)  # averaged below
        stats["entropy"] = (entropy * mask).sum() / mask.sum().clamp(min=1)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + float(v) / len(batch.rollouts)
    return sums


def sync_gradients(model: Any, accelerator: Accelerator, sharded: bool) -> None:
    """Average gradients over processes by hand: with dynamic sampling, ranks may run a
    different number of backward passes (even none), which DDP's per-backward all-reduce
    cannot handle without hanging. A sharded model's backward already reduced them."""
    if accelerator.num_processes == 1 or sharded:
        return
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= accelerator.num_processes


def gather_rewards(batch: Batch, accelerator: Accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """All processes' rewards (N_total,) and per-function rewards (N_total, K)."""
    if accelerator.num_processes == 1:
        return batch.rewards, batch.per_fn
    from accelerate.utils import gather_object

    parts = gather_object([(batch.rewards, batch.per_fn)])
    k = batch.per_fn.shape[1] if batch.per_fn.dim() == 2 else 0
    return (torch.cat([r for r, _ in parts]),
            torch.cat([p.reshape(-1, k) if p.numel() else torch.zeros(0, k) for _, p in parts]))


def step_metrics(batch: Batch, names: list[str], g: int, rewards: torch.Tensor | None = None,
                 per_fn: torch.Tensor | None = None) -> dict[str, Any]:
    """Reward statistics over ``rewards``/``per_fn`` (all processes' when given); the rest
    over this process's batch."""
    rewards = batch.rewards if rewards is None else rewards
    per_fn = batch.per_fn if per_fn is None else per_fn
    texts = [t for r in batch.rollouts for t in r.texts]
    lengths = torch.cat([r.mask.sum(1).float() for r in batch.rollouts]) if batch.rollouts else torch.zeros(1)
    truncated = [t for r in batch.rollouts for t in r.truncated]
    distinct = [f for r in batch.rollouts for f in distinct_fraction(r.texts, len(r.texts))] or [1.0]
    m: dict[str, Any] = {
        "reward_mean": float(rewards.nanmean()) if len(rewards) else float("nan"),
        "reward_std": _nan_std(rewards),
        "adv_mean": float(batch.advantages.mean()) if len(batch.advantages) else 0.0,
        "adv_abs_mean": float(batch.advantages.abs().mean()) if len(batch.advantages) else 0.0,
        "completion_len_mean": float(lengths.mean()), "completion_len_max": float(lengths.max()),
        "truncated_frac": sum(truncated) / max(len(truncated), 1),
        "distinct_frac": sum(distinct) / len(distinct),
        "groups_zero_spread": batch.zero_spread, "groups_dropped": batch.dropped,
        "rewards_none_frac": float(per_fn.isnan().float().mean()) if per_fn.numel() else 0.0,
    }
    for k, name in enumerate(names):
        col = per_fn[:, k] if per_fn.numel() else torch.zeros(0)
        m[f"reward/{name}"] = float(col.nanmean()) if len(col) and not col.isnan().all() else float("nan")
    return {**m, **reward_spreads(batch, g)}


def reward_spreads(batch: Batch, g: int) -> dict[str, float]:
    """``spread/reward``: the mean within-group std of the reward (:func:`span_spread`), and
    ``spread/<column>`` the same for every numeric column a reward logged with ``log_extra``
    (e.g. a judge reward's components): which part of the reward the advantages come from.
    Groups are the batch's rollouts (G completions of a prompt; multi-turn: the turns that
    shared a prompt, any number), or groups of ``g`` when the rollouts do not cover the rewards."""
    spans = batch.spans()
    if not spans or spans[-1][1] != len(batch.rewards):  # no rollouts kept: contiguous groups of g
        spans = [(i, i + g) for i in range(0, len(batch.rewards), g)]
    out = {"spread/reward": span_spread(batch.rewards, spans)}
    for name, values in batch.extras.items():
        if len(values) == len(batch.rewards) and all(v is None or isinstance(v, (int, float)) for v in values):
            out[f"spread/{name}"] = span_spread(torch.tensor([math.nan if v is None else float(v) for v in values]),
                                                spans)
    return out


def _nan_std(x: torch.Tensor) -> float:
    valid = x[~x.isnan()]
    return float(valid.std()) if len(valid) > 1 else 0.0


def sample_table(batch: Batch, n: int, g: int) -> list[dict[str, Any]]:
    rows = []
    for r, (lo, _) in zip(batch.rollouts, batch.spans()):
        for j, text in enumerate(r.texts):
            if len(rows) >= n:
                return rows
            k = lo + j
            rows.append({"prompt": _prompt_text(r.sample), "completion": text,
                         "reward": _num(batch.rewards[k]), "advantage": _num(batch.advantages[k]),
                         **{name: col[k] for name, col in batch.extras.items() if k < len(col)}})
    return rows


def _num(x: torch.Tensor) -> float | None:
    v = float(x)
    return None if math.isnan(v) else round(v, 4)


def _prompt_text(sample: Any) -> str:
    users = [m for m in sample.messages if m["role"] == "user"]
    parts = users[-1]["content"] if users else []
    return " ".join(p.get("text", "<image>") if p["type"] == "text" else "<image>" for p in parts)


def collect_batch(sample: Callable[[list], list[Rollout]], stream: BatchStream, prompts: list, rewards: RewardSet,
                  cfg: Any, timer: PhaseTimer) -> Batch:
    """Generate (``sample``: prompts -> their groups) and score a batch. With dynamic sampling,
    groups whose rewards are all equal (no learning signal) are dropped and refilled with fresh
    prompts, up to ``max_refill`` extra rounds."""
    with timer("gen"):
        rollouts = sample([prompts[i] for i in stream.next()])
    with timer("reward"):
        batch = make_batch(rollouts, rewards, cfg)
    if not cfg.drop_zero_spread:
        return batch
    for _ in range(cfg.max_refill):
        if batch.zero_spread - batch.dropped == 0:
            break
        batch = drop_flat_groups(batch, cfg.num_generations)
        with timer("gen"):
            extra = sample([prompts[i] for i in stream.next()])
        with timer("reward"):
            batch = merge(batch, make_batch(extra, rewards, cfg))
    return drop_flat_groups(batch, cfg.num_generations)


def optimize(model: Any, batch: Batch, old: list | None, ref: list | None, recipe: Recipe, logps: Callable,
             run: Run, optimizer: Any, scheduler: Any, step: int) -> dict[str, float]:
    """``num_iterations`` optimizer steps on one batch. Every process steps if any of them has
    groups to learn from (their gradients are averaged), so processes never diverge; a step
    whose loss, lr or gradient norm is not finite is stopped or skipped (``run.step_ok``)."""
    accelerator = run.accelerator
    stats: dict[str, float] = {}
    has_work = accelerator.reduce(torch.tensor(float(len(batch.rollouts)), device=accelerator.device)) > 0
    for _ in range(recipe.grpo.num_iterations):
        if batch.rollouts:
            stats = update(model, batch, old, ref, recipe, logps, accelerator)
        if has_work:
            sync_gradients(model, accelerator, run.layout.sharded)
            if recipe.train.max_grad_norm:
                stats["grad_norm"] = float(accelerator.clip_grad_norm_(model.parameters(), recipe.train.max_grad_norm))
            if run.step_ok(step, loss=stats.get("loss"), lr=scheduler.get_last_lr()[0],
                           grad_norm=stats.get("grad_norm")):
                optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return stats


def count_tokens(meter: ComputeMeter, batch: Batch, cfg: Any) -> None:
    """What one step ran, for compute accounting. Generation runs each prompt (with its images)
    once per group (the ``hf`` backend samples a group on one prompt prefix; a multi-turn turn
    is its own prompt), then one token at a time; the old/reference log-prob passes are
    forward-only; the update runs ``num_iterations`` forward+backward passes. With
    ``shared_prefix`` the log-prob passes run a prompt once per group, otherwise once per
    completion."""
    per_group = [(batch_units(r.prompt, meter.flops), r.completion_ids.shape[0]) for r in batch.rollouts]
    prompt = sum((p for p, _ in per_group), Units())
    prompt_per_completion = sum((p * n for p, n in per_group), Units())
    completions = Units(sum(int(r.mask.sum()) for r in batch.rollouts))
    scored = (prompt if cfg.shared_prefix else prompt_per_completion) + completions
    extra = (cfg.num_iterations > 1) + (cfg.beta > 0)  # old and reference log-prob passes
    meter.add_forward(prompt + completions + scored * extra)
    meter.add_train(scored * cfg.num_iterations)
    meter.add_data(prompt=prompt.tokens, completion=completions.tokens)


def make_collector(recipe: Recipe, generator: Generator, prompts: list, rewards: RewardSet, params: SamplingParams,
                   prompt_inputs: Callable[[Any], dict], pad_id: int,
                   run_dir: Any) -> Callable[[BatchStream, PhaseTimer], Batch]:
    """The generation phase of a step: G completions of each of the stream's prompts, or
    (with ``env``) G episodes from each of its initial states, every turn a completion."""
    if not recipe.env.name:
        groups = partial(sample_groups, generator, params=replace(params, n=recipe.grpo.num_generations),
                         prompt_inputs=prompt_inputs, pad_id=pad_id)
        return lambda stream, timer: collect_batch(groups, stream, prompts, rewards, recipe.grpo, timer)

    episodes = EpisodeCollector(recipe.env, recipe.grpo, generator, params, prompt_inputs, pad_id, run_dir)

    def collect(stream: BatchStream, timer: PhaseTimer) -> Batch:
        b = episodes.collect(stream.next(), timer)
        return Batch(b.rollouts, b.rewards, b.rewards.new_zeros(len(b.rewards), 0), b.advantages, b.zero_spread,
                     metrics=b.metrics)

    return collect


def check_recipe(recipe: Recipe) -> None:
    """What a GRPO recipe needs beyond the schema, checked before any work."""
    check_env_recipe(recipe.env, recipe.grpo, recipe.train.max_steps, bool(recipe.rewards))
    if not recipe.rewards and not recipe.env.name:
        raise ConfigError("a GRPO recipe needs at least one entry under 'rewards'")
    if recipe.train.grad_accum != 1:
        raise ConfigError("train.grad_accum does not apply to GRPO: each step already accumulates gradients "
                          "over its grpo.prompts_per_step groups (one forward per group); raise "
                          "grpo.prompts_per_step for a larger batch")


def check_layout(recipe: Recipe, layout: Layout) -> None:
    """What the recipe needs from the way processes share the model. Every forward of a
    sharded model is a collective, so under FSDP all processes must run as many: nothing
    may leave them with different numbers of groups or turns."""
    if not layout.sharded:
        return
    if recipe.grpo.drop_zero_spread:
        raise ConfigError("grpo.drop_zero_spread cannot run under FSDP: processes would run different numbers "
                          "of forward passes after dropping groups; use train.distributed=ddp for dynamic sampling")
    if recipe.env.name:
        raise ConfigError("multi-turn GRPO (env.name) cannot run under FSDP yet: episodes of different lengths "
                          "would leave processes with different numbers of forward passes; use "
                          "train.distributed=ddp")
    if recipe.generation.backend == "http":
        raise ConfigError("generation.backend=http cannot run under FSDP yet (each weight sync would have to "
                          "gather the sharded policy); use train.distributed=ddp with generation servers")


def run_grpo(recipe: Recipe, show_progress: bool = True,
             on_step: Callable[[int, Any], dict[str, float] | None] | None = None) -> dict[str, Any]:
    """Train with GRPO as the recipe says; returns the run summary (also written to the run dir).

    ``on_step(step, policy)``, if given, runs after each step's update with the (unwrapped)
    policy, e.g. a validation eval every N steps; the metrics it returns are logged with the
    step (timed as ``time/on_step``). It must leave the policy's weights and mode as it found them.
    """
    t, cfg = recipe.train, recipe.grpo
    check_recipe(recipe)
    with Run.start(recipe, show_progress, engine="grpo") as run:
        check_layout(recipe, run.layout)
        acc = run.accelerator
        loaded = load_for_training(recipe.model, t.mode, recipe.lora, recipe.quant, recipe.freeze,
                                   t.gradient_checkpointing)
        model, processor = loaded.model, loaded.processor
        ref_model = None
        if cfg.beta > 0 and t.mode == "full":
            ref_model = run.shard(copy.deepcopy(model).eval().requires_grad_(False), loaded.family)
        rewards = RewardSet(recipe.rewards, judge=recipe.judge)
        prompts, bad_rows = ([], BadRows()) if recipe.env.name else \
            load_prompts(recipe.data, show_progress and run.is_main)
        if prompts:
            rewards.check_columns(data_columns(prompts))
        steps = t.max_steps if t.max_steps > 0 else max(1, math.ceil(t.epochs * len(prompts) / cfg.prompts_per_step))
        # the stream hands out prompt indices, or with env the indices of initial states
        n_items = initial_states(recipe.env, steps * cfg.prompts_per_step * acc.num_processes) \
            if recipe.env.name else len(prompts)
        model = run.shard(model, loaded.family)
        optimizer = build_optimizer(model, loaded.family, t)
        scheduler = build_scheduler(optimizer, t, steps * cfg.num_iterations)
        model, optimizer = run.prepare(model, optimizer)
        stream = BatchStream(n_items, cfg.prompts_per_step, t.seed, recipe.data.shuffle,
                             acc.process_index, acc.num_processes)
        gen_cfg = recipe.generation
        generator: Generator = build_generator(
            gen_cfg.backend, acc.unwrap_model(model), processor, system_prompt=recipe.data.system_prompt,
            batch_size=gen_cfg.batch_size or (GENERATION_BATCH if recipe.env.name else cfg.prompts_per_step), options=gen_cfg.options)
        params = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_p, top_k=cfg.top_k)
        pad_id, g = stop_and_pad_ids(acc.unwrap_model(model), loaded.tokenizer, loaded.family)[1], cfg.num_generations
        # a group's prompt as the log-prob passes see it: rendered as the hf backend renders it
        prompt_inputs = partial(render_prompt, processor=processor, system_prompt=recipe.data.system_prompt)
        collect = make_collector(recipe, generator, prompts, rewards, params, prompt_inputs, pad_id, run.dir)
        # How log-probs of a group are computed: the prompt (and its images) once per group, or
        # repeated in every row (the padded path, also used under gradient checkpointing).
        logps = partial(rollout_logps, pad_id=pad_id, temperature=cfg.temperature,
                        position_style=loaded.family.position_style if cfg.shared_prefix else None)
        run.resume(model, optimizer, scheduler, stream)
        # A backend that samples elsewhere (http: generation servers) gets the policy before the
        # first step and after every update; the in-process one samples from it directly.
        sync_weights = getattr(generator, "sync_weights", None)
        if sync_weights is not None:
            sync_weights(acc.unwrap_model(model), run.start_step)

        timer, console = PhaseTimer(), Console(stderr=True)
        last: dict[str, Any] = {}
        episode_stats: dict[str, float] = {}  # multi-turn: the last step's episode statistics
        bar = progress_bar(show_progress and run.is_main)
        with bar:
            task = bar.add_task("grpo", total=steps, completed=run.start_step, info="")
            for step in range(run.start_step + 1, steps + 1):
                tick = time.perf_counter()
                rewards.trainer_state.global_step, rewards.trainer_state.max_steps = step - 1, steps
                batch = collect(stream, timer)
                old = ref = None
                if batch.rollouts:
                    with timer("old"):
                        old = group_logps(model, batch, logps) if cfg.num_iterations > 1 else None
                    with timer("ref"):
                        if cfg.beta > 0:
                            with reference_mode(acc.unwrap_model(model), ref_model) as ref_policy:
                                ref = group_logps(ref_policy, batch, logps)
                with timer("update"):
                    stats = optimize(model, batch, old, ref, recipe, logps, run, optimizer, scheduler, step)
                if sync_weights is not None:
                    with timer("sync"):
                        sync_weights(acc.unwrap_model(model), step)
                count_tokens(run.meter, batch, cfg)
                hooked: dict[str, float] = {}
                if on_step is not None:
                    with timer("on_step"):
                        hooked = on_step(step, acc.unwrap_model(model)) or {}
                metrics = {**rewards.pop_metrics(), **step_metrics(batch, rewards.names, g, *gather_rewards(batch, acc)),
                           **batch.metrics, **stats, **hooked,
                           "lr": scheduler.get_last_lr()[0], **rewards.judge_stats(),  # keys are judge/<counter>
                           **timer.pop(), "step_seconds": time.perf_counter() - tick}
                if metrics["distinct_frac"] < COLLAPSE_WARNING:
                    console.print(f"[yellow]step {step}: groups are collapsing to identical completions "
                                  f"(distinct share {metrics['distinct_frac']:.2f})")
                if step % t.log_every == 0 or step == steps:
                    table = sample_table(batch, cfg.samples_to_log, g)
                    run.log(step, {**metrics, "samples": table})
                    run.log_text(step, "samples", "\n\n".join(f"**{r['reward']}** {r['completion']}" for r in table))
                last, episode_stats = metrics, batch.metrics
                bar.update(task, advance=1,
                           info=f"reward {metrics['reward_mean']:.3f} len {metrics['completion_len_mean']:.0f}")
                run.maybe_save(step, steps)

        judge = {k.removeprefix("judge/"): v for k, v in rewards.judge_stats().items()}
        summary = {"steps": steps, "reward_mean_last": last.get("reward_mean"), "prompts": len(prompts), "judge": judge,
                   **episode_stats}
        return run.finish(steps, summary, processor, bad_rows)
