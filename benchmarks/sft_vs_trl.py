"""SFT training speed: vlmtune's engine against TRL's ``SFTTrainer`` on the same tiny model
and data. Prints the seconds per optimizer step of each side and their ratio (TRL / vlmtune).

    HF_HUB_OFFLINE=1 python benchmarks/sft_vs_trl.py [--steps 30] [--batch 64] [--n 2000] [--threads N]

Shared setup: the demo's tiny Qwen2-VL (``build_demo_model``, float32, random init from the
demo's seed), full fine-tuning of everything (vision tower and projector included), AdamW
at a constant lr of 1e-3 (no warm-up, no weight decay, gradients clipped to norm 1), batch
``--batch`` with no accumulation, ``max_length`` 1024, ``--steps`` steps, the same
``--n`` clarify rows (168 px images), loss on the assistant turns only, the same number of
torch threads. Both sides run in this one process, vlmtune first, each with its own copy
of the model loaded from the same folder.

What is timed: the mean seconds of steps 4 to the last (the first 3 are warm-up). Each
step includes reading the images from disk, the image processor, collation, forward,
backward, clipping and the optimizer step; neither side's model loading, vlmtune's
render-check pre-pass nor TRL's dataset set-up is included.
- vlmtune: ``step_seconds`` of each step in the run's ``metrics.jsonl`` (``train.log_every=1``),
  from the start of building the step's batch to the end of the optimizer step.
- TRL: the wall time between consecutive ``on_step_end`` callbacks (step 1 from
  ``on_train_begin``), so it also counts TRL's per-step logging, a few milliseconds.

A third row runs vlmtune with ``model.linear_patch_embed=false`` (the vision patch embedding
as the family's Conv3d, as transformers runs it), to show that switch's share.

TRL is set against its own SFT defaults where they differ from the setup above: bf16 off
(TRL turns it on), activation checkpointing off (TRL turns it on). Differences that remain,
each engine's own: the data order (each shuffles with its own seeded sampler), vlmtune's
loader defaults (e.g. ``model.linear_patch_embed``) against TRL's fused LM head (log-probs
of the label positions only, plus entropy and token accuracy for its logs) and its default
optimizer (``adamw_torch_fused``; vlmtune uses ``torch.optim.AdamW``). Loss masking: TRL 1.16
masks to the assistant turns for VLM data (``assistant_only_loss=True``, transformers >=
5.18) by swapping in its Qwen2-VL training template with ``{% generation %}`` markers; that
mask also counts the newline after ``<|im_end|>``, which vlmtune leaves out, so TRL has one
more (easy) loss token per sample and the two losses are close, not equal.

Timings depend on the machine and on whatever else runs on it. On a busy machine torch's
thread pool can stall for whole runs (seen here: the same run 10x slower with 2 threads on
2 shared cores); the min-max column shows it, and ``--threads 1`` is steadier.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from vlmtune.config import load_recipe
from vlmtune.tasks.clarify.data import make_clarify_dataset
from vlmtune.data.readers import read_samples
from vlmtune.demos import PREPASS_PROCS, build_demo_model
from vlmtune.tasks.clarify.demo import DemoSettings
from vlmtune.train.sft import run_sft

WARMUP = 3  # steps left out of the timing


def timing(step_seconds: list[float]) -> dict:
    """The seconds of each step after the warm-up, and their mean."""
    steps = step_seconds[WARMUP:]
    return {"steps_s": steps, "s_per_step": sum(steps) / len(steps)}


def run_vlmtune(model_dir: Path, train_path: Path, run_dir: Path, args: argparse.Namespace,
                *overrides: str) -> dict:
    recipe = load_recipe(None, [
        f"model.path={model_dir}", f"data.train_path={train_path}", f"output.dir={run_dir}", "train.mode=full",
        "output.overwrite=true",  # a re-run with the same --out replaces the run
        "freeze.vision=false", "freeze.projector=false", "freeze.language=false", "train.seed=0",
        f"train.max_steps={args.steps}", f"train.batch_size={args.batch}", f"train.lr={args.lr}",
        "train.scheduler=constant", "train.warmup_steps=0", "train.weight_decay=0.0", "train.max_grad_norm=1.0",
        "train.max_length=1024", "train.log_every=1", f"data.num_proc={PREPASS_PROCS}", *overrides])
    summary = run_sft(recipe, show_progress=False)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {**timing([r["step_seconds"] for r in rows]), "losses": [r["loss"] for r in rows],
            "trainable": summary["trainable_params"],
            "threads": torch.get_num_threads()}


def trl_dataset(train_path: Path):
    """The canonical rows as TRL takes VLM data: ``messages`` plus an ``images`` column that
    decodes each row's PNG files to PIL images when the row is read (as vlmtune does)."""
    from datasets import Dataset, Image, List

    samples, _ = read_samples(train_path)
    ds = Dataset.from_dict({"messages": [s.messages for s in samples],
                            "images": [[str(p) for p in s.images] for s in samples]})
    return ds.cast_column("images", List(Image()))


def run_trl(model_dir: Path, train_path: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    from transformers import AutoModelForImageTextToText, AutoProcessor, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    config = SFTConfig(
        output_dir=str(run_dir), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, max_length=1024, assistant_only_loss=True,
        activation_checkpointing=False, bf16=False, logging_steps=1, report_to=[], save_strategy="no",
        dataloader_num_workers=0, dataloader_pin_memory=False, seed=0, disable_tqdm=True)
    clock = StepClock()
    trainer = SFTTrainer(model=model, args=config, train_dataset=trl_dataset(train_path),
                         processing_class=AutoProcessor.from_pretrained(model_dir), callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # no per-step printing (vlmtune runs without its bar)
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    step_seconds = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    return {**timing(step_seconds), "losses": losses, "trainable": trainable,
            "threads": torch.get_num_threads(), "optim": str(config.optim.value)}


def table(results: dict[str, dict], args: argparse.Namespace) -> Table:
    t = Table(title=f"SFT, tiny Qwen2-VL: {args.steps} steps x {args.batch} samples, {args.threads} threads "
                    f"(timed: steps {WARMUP + 1}-{args.steps})",
              caption="TRL = trl.SFTTrainer; min-max: of one step; loss last 5: their mean; "
                      + ", ".join(f"{name} trains {r['trainable']:,} params" for name, r in results.items()))
    for col in ("engine", "s/step", "min-max", "samples/s", "loss last", "loss last 5"):
        t.add_column(col, justify="left" if col == "engine" else "right")
    for name, r in results.items():
        t.add_row(name, f"{r['s_per_step']:.3f}", f"{min(r['steps_s']):.2f}-{max(r['steps_s']):.2f}",
                  f"{args.batch / r['s_per_step']:.1f}", f"{r['losses'][-1]:.4f}",
                  f"{sum(r['losses'][-5:]) / len(r['losses'][-5:]):.4f}")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n", type=int, default=2000, help="clarify training rows")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, both sides")
    ap.add_argument("--out", type=Path, default=None, help="keep data, model and runs here (default: temp dir)")
    args = ap.parse_args()
    if args.steps <= WARMUP:
        ap.error(f"--steps must be more than the {WARMUP} warm-up steps")
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="sft-vs-trl-"))
    try:
        s = DemoSettings()
        data = make_clarify_dataset(out / "data", n=args.n, seed=s.seed, eval_n=0, image_size=s.image_size)
        model_dir = build_demo_model(out / "model", s)
        results = {"vlmtune": run_vlmtune(model_dir, data["train"], out / "vlmtune", args),
                   "vlmtune, conv patch embed": run_vlmtune(model_dir, data["train"], out / "vlmtune-conv", args,
                                                            "model.linear_patch_embed=false"),
                   "TRL": run_trl(model_dir, data["train"], out / "trl", args)}
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    v, c, t = results["vlmtune"], results["vlmtune, conv patch embed"], results["TRL"]
    console = Console()
    console.print(table(results, args))
    console.print(f"TRL s/step / vlmtune s/step = {t['s_per_step'] / v['s_per_step']:.2f}; TRL loss mask: "
                  f"assistant_only_loss=True (includes the newline after <|im_end|>); TRL optimizer {t['optim']}")
    print(json.dumps({"vlmtune_s_per_step": round(v["s_per_step"], 4), "trl_s_per_step": round(t["s_per_step"], 4),
                      "ratio_trl_over_vlmtune": round(t["s_per_step"] / v["s_per_step"], 3),
                      "vlmtune_conv_s_per_step": round(c["s_per_step"], 4),
                      "steps": args.steps, "timed_steps": args.steps - WARMUP, "batch": args.batch, "n": args.n,
                      "threads": [v["threads"], t["threads"]], "vlmtune_loss_last": round(v["losses"][-1], 4),
                      "trl_loss_last": round(t["losses"][-1], 4), "trl_assistant_only_loss": True,
                      "trl_optim": t["optim"]}))


if __name__ == "__main__":
    main()
