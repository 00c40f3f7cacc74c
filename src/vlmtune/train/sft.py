"""Supervised fine-tuning: a loop you can read top to bottom.

setup (model, data, optimizer, resume) -> for each step: gather ``grad_accum``
micro-batches, backward each with its share of the step's loss tokens, clip, step
(unless the loss, lr or gradient norm is not finite), log, maybe evaluate and
checkpoint -> save ``final/`` and ``run_summary.json``. The lifecycle around the loop
(run dir, resume, checkpoints, final save) is :class:`vlmtune.train.run.Run`.

The loss of a step is the mean over *all* label tokens of its micro-batches, on every
process (not a mean of per-micro-batch or per-process means), so gradient accumulation and
data parallelism (DDP or FSDP) give the same gradient as one process taking the whole batch.

Packing (``train.packing``, on by default): a micro-batch's samples run end to end in one
row without padding (:mod:`vlmtune.batching.packing`), each attending only itself, with its
own positions (:mod:`vlmtune.models.packing`, which also runs SDPA sample by sample); the
loss and its gradients are those of the padded batch. ``train.max_tokens_per_batch`` splits a micro-batch into several such rows.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
import torch.nn.functional as F

from vlmtune.batching.collate import collate
from vlmtune.batching.dataset import RenderedDataset, load_datasets
from vlmtune.batching.packing import packed_batches
from vlmtune.batching.render import IGNORE
from vlmtune.config import ConfigError, Recipe
from vlmtune.flops import ModelFlops, Units, batch_units
from vlmtune.models.families import Family
from vlmtune.models.loading import load_for_training, pad_token_id
from vlmtune.models.packing import packed_position_ids, use_packed_attention
from vlmtune.train.common import BatchStream, build_optimizer, build_scheduler, progress_bar, total_steps
from vlmtune.train.run import Run


def label_tokens(batch: dict[str, Any]) -> int:
    """Tokens that carry the loss once labels are shifted by one."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def summed_token_loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Next-token cross-entropy summed over the label tokens.

    Logits are computed only at the positions where some row of the batch has a label
    (``logits_to_keep``, which every supported family's forward takes and which keeps the
    family's own head, e.g. Gemma's soft-capping): the prompt, image and padding positions
    need none, and with a real vocabulary they are large: 151,936 float32 logits per position
    are 1.2 GB for one 2,048-token row. On the demo's batches 37 of 74 positions are kept.
    """
    labels = batch["labels"]
    keep = (labels[:, 1:] != IGNORE).any(0).nonzero().squeeze(1)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
    if logits.shape[1] != len(keep):  # a forward that ignores logits_to_keep returns every position
        logits = logits[:, keep]
    return F.cross_entropy(logits.float().flatten(0, 1), labels[:, keep + 1].flatten(),
                           ignore_index=IGNORE, reduction="sum")


def model_batches(items: list[dict[str, torch.Tensor]], model: torch.nn.Module, family: Family, pad_id: int,
                  device: torch.device, packing: bool, max_tokens: int | None = None) -> list[dict[str, Any]]:
    """Rendered samples as the model inputs (with labels) of one or more forwards: packed rows
    with their positions, or one padded batch."""
    if not packing:
        return [{k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(items, pad_id, family.token_keys).items()}]
    rows = []
    for row in packed_batches(items, family.token_keys, max_tokens):
        lengths = row.pop("seq_lengths")
        row = {k: v.to(device) if torch.is_tensor(v) else v for k, v in row.items()}
        row["position_ids"] = packed_position_ids(model, family, row, lengths)
        rows.append(row)
    return rows


def packing_off_reason(packing: bool, family: Family) -> str | None:
    """Why this run pads its rows although ``train.packing`` asks to pack (None: it packs, or
    packing is off by the recipe)."""
    if packing and family.packing_blocker:
        return f"train.packing is on, but family {family.name!r} pads its rows: {family.packing_blocker}"
    return None


def micro_loss(model: torch.nn.Module, batch: dict[str, Any], step_tokens: float) -> torch.Tensor:
    """This micro-batch's summed token loss divided by the whole step's token count (per
    process, when processes average their gradients)."""
    return summed_token_loss(model, batch) / step_tokens


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: RenderedDataset, batch_size: int, pad_id: int,
             device: torch.device, flops: ModelFlops, packing: bool = False,
             max_tokens: int | None = None) -> tuple[float, Units]:
    """Mean token loss over the held-out set, and what was run forward to get it."""
    model.eval()
    total, tokens, seen = 0.0, 0, Units()
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        for batch in model_batches(items, model, dataset.family, pad_id, device, packing, max_tokens):
            total += float(summed_token_loss(model, batch))
            tokens += label_tokens(batch)
            seen += batch_units(batch, flops)
    model.train()
    return total / max(tokens, 1), seen


def run_sft(recipe: Recipe, show_progress: bool = True) -> dict[str, Any]:
    """Train as the recipe says; returns the run summary (also written to the run dir)."""
    t = recipe.train
    with Run.start(recipe, show_progress) as run:
        acc = run.accelerator
        loaded = load_for_training(recipe.model, t.mode, recipe.lora, recipe.quant, recipe.freeze,
                                   t.gradient_checkpointing)
        model, processor = loaded.model, loaded.processor
        pad_id = pad_token_id(loaded.tokenizer)
        train_ds, eval_ds, bad_rows = load_datasets(recipe.data, processor, t.max_length, t.seed,
                                                    show_progress and run.is_main, family=loaded.family)
        steps = total_steps(t, len(train_ds), acc.num_processes)
        model = run.shard(model, loaded.family)
        optimizer = build_optimizer(model, loaded.family, t)
        scheduler = build_scheduler(optimizer, t, steps)
        model, optimizer = run.prepare(model, optimizer)
        packing_off = packing_off_reason(t.packing, loaded.family)
        if packing_off:
            run.warn(packing_off)
        packing = t.packing and not packing_off
        if packing and t.max_tokens_per_batch and run.layout.sharded and acc.num_processes > 1:
            raise ConfigError("train.max_tokens_per_batch under FSDP across processes: processes would run "
                              "different numbers of forwards per step (each one a collective); leave it unset")
        if packing:
            use_packed_attention(model)  # SDPA sample by sample instead of across the whole masked row

        def batches(items: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
            return model_batches(items, model, loaded.family, pad_id, acc.device, packing, t.max_tokens_per_batch)

        stream = BatchStream(len(train_ds), t.batch_size, t.seed, recipe.data.shuffle,
                             acc.process_index, acc.num_processes)
        loss_value = run.resume(model, optimizer, scheduler, stream).get("train_loss_last", float("nan"))

        def held_out_loss() -> float:
            loss, units = evaluate(model, eval_ds, recipe.eval.batch_size, pad_id, acc.device, run.meter.flops,
                                   packing, t.max_tokens_per_batch)
            run.meter.add_forward(units)
            return loss

        eval_loss = None
        model.train()
        bar = progress_bar(show_progress and run.is_main)
        with bar:
            task = bar.add_task("sft", total=steps, completed=run.start_step, info="")
            for step in range(run.start_step + 1, steps + 1):
                tick = time.perf_counter()
                # grad_accum micro-batches, each one padded batch or one or more packed rows
                micro = [b for _ in range(t.grad_accum) for b in batches([train_ds[i] for i in stream.next()])]
                local_tokens = sum(label_tokens(b) for b in micro)
                step_tokens = int(acc.reduce(torch.tensor(local_tokens, device=acc.device), "sum"))
                # DDP and FSDP average gradients over processes; dividing by the step's tokens
                # per process makes that average the token mean over every process's batches.
                tokens_per_process = step_tokens / acc.num_processes
                loss_sum = 0.0
                for i, batch in enumerate(micro):
                    # Under DDP, gradients are all-reduced once, after the last micro-batch (FSDP
                    # reduces each micro-batch's into the shards as it goes).
                    with acc.no_sync(model) if i < len(micro) - 1 else contextlib.nullcontext():
                        loss = micro_loss(model, batch, tokens_per_process)
                        acc.backward(loss)
                    loss_sum += loss.item()
                loss_value = float(acc.reduce(torch.tensor(loss_sum, device=acc.device), "mean"))
                grad_norm = (acc.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                             if t.max_grad_norm else None)
                lr = scheduler.get_last_lr()[0]
                if run.step_ok(step, loss=loss_value, lr=lr, grad_norm=grad_norm):
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                seconds = time.perf_counter() - tick
                seen = sum((batch_units(b, run.meter.flops) for b in micro), Units())
                run.meter.add_train(seen)
                run.meter.add_data(prompt=seen.tokens - local_tokens, completion=local_tokens)
                metrics = {"loss": loss_value, "lr": lr, "grad_norm": grad_norm, "step_seconds": seconds,
                           "tokens_per_s": seen.tokens / seconds, "loss_tokens": step_tokens, "epoch": stream.epoch}
                if eval_ds is not None and (step == steps or (recipe.eval.every and step % recipe.eval.every == 0)):
                    metrics["eval_loss"] = eval_loss = held_out_loss()
                if step % t.log_every == 0 or step == steps or "eval_loss" in metrics:
                    run.log(step, metrics)
                bar.update(task, advance=1, info=f"loss {loss_value:.4f} lr {lr:.2e} {metrics['tokens_per_s']:.0f} tok/s")
                run.maybe_save(step, steps, train_loss_last=loss_value)

        summary = {"steps": steps, "train_loss_last": loss_value, "train_rows": len(train_ds),
                   "trainable_params": _trainable(model), "packing": packing}
        if packing_off:
            summary["packing_off"] = packing_off
        if eval_ds is not None:  # also after resuming a run that had already finished
            summary["eval_loss"] = eval_loss if eval_loss is not None else held_out_loss()
        return run.finish(steps, summary, processor, bad_rows, train_loss_last=loss_value)


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
