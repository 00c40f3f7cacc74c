"""GRPO side by side with TRL's ``GRPOTrainer``: seconds per step and peak memory of each tool,
each in a process of its own, on the issue-17 Qwen2-VL (:mod:`bench_model`).

    HF_HUB_OFFLINE=1 python benchmarks/grpo_vs_trl.py [--pairs 1] [--steps 8] [--threads N] [--out DIR]

Setup (issue 17): 16 one-image prompts (a shape drawn on a 168 px square, a question about it;
seeded); each step samples 2 prompts x G = 8 completions of at most 32 new tokens at
temperature 1 (no top-k, top-p 1), scores them with one rule reward (:func:`length_reward`,
the same function for both tools: TRL's reward signature is vlmtune's), takes group-relative
advantages and one optimizer step: AdamW at a constant lr of 1e-4, gradients clipped to norm
1, beta 0 (no reference model), one update per batch (no old-policy pass), float32, full
fine-tuning with the vision tower and projector trainable, generation in the trainer's own
process (no vLLM). TRL is held to the same where its defaults differ: 16 completions per
device batch (2 prompts), loss ``grpo`` (vlmtune's default; TRL's is ``dapo``), activation
checkpointing off, bf16 off. Everything else is each tool's default (vlmtune: the prompt and
its images run once per group in generation and in the update; TRL: ``generate`` with the
prompt repeated per completion).

Each tool runs in a fresh process (``--side``), started by this script, which reads the
child's peak resident memory from the operating system (``wait4``) and its timings from a JSON
file the child writes. ``--pairs N`` runs vlmtune and TRL N times in turn (A B A B ...) and
reports each figure's median.

- s/step: wall seconds of steps 2..N (step 1 is warm-up), per step: generation, reward,
  advantages, log-probs, backward, clipping, optimizer step.
- CPU s/step: the process's CPU seconds (all threads) over the same steps, per step; steadier
  than wall time when other processes share the cores.
- peak RSS: the child process's largest resident set size.
- vlmtune's phases: its own ``time/gen`` and ``time/update`` per step (same steps).
- FLOP/s share: vlmtune's FLOPs (its compute report: generation forward, update forward and
  backward) per second of its steps, against this machine's dense float32 matmul rate,
  measured in this run.

The ratios are printed last. A busy machine moves every figure: quote the load average
printed with them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_model import build_model, fmt_rate, full_training, matmul_flops
from child import clock_vlmtune_steps, run_child, side_by_side_parser

HERE = Path(__file__).resolve()
PROMPTS, PER_STEP, G, NEW_TOKENS, LR = 16, 2, 8, 32, 1e-4
# One image size for all prompts: with two sizes in a batch, TRL 1.16's log-prob pass (under
# transformers 5.24) pairs a row's image tokens with another row's image grid and fails.
IMAGE_SIZE = 168
QUESTION = "What shape is in the picture, and what colour is it?"


def length_reward(prompts: list, completions: list, **kwargs) -> list[float]:
    """A rule reward with a spread inside every group: how close a completion's text is to 100
    characters (32 tokens of this vocabulary are 80-130). Works as a vlmtune reward and as a TRL
    reward function."""
    return [-abs(len(c[0]["content"]) - 100) / 100 for c in completions]


# --------------------------------------------------------------------------- set-up (parent)
def build_prompts(out: Path, n: int = PROMPTS, seed: int = 0) -> Path:
    """``n`` one-image prompts (a shape on a square of ``IMAGE_SIZE`` px and a question) as
    canonical samples without an answer."""
    from vlmtune.data.builtin import COLOURS, SHAPES, draw_shape

    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = out / "images" / f"{i:03d}.png"
        draw_shape(rng, rng.choice(SHAPES), COLOURS[rng.choice(list(COLOURS))], IMAGE_SIZE).save(path)
        rows.append({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
                     "images": [str(path)]})
    path = out / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_side(side: str, work: Path, index: int, steps: int, threads: int | None) -> dict:
    """One tool in a fresh process: its result file plus the peak RSS the kernel reports."""
    result = work / f"result-{side}-{index}.json"
    extra = ["--threads", str(threads)] if threads else []
    return run_child([str(HERE), "--side", side, "--work", str(work), "--result", str(result), "--steps", str(steps),
                      *extra], result)


# --------------------------------------------------------------------------- the two sides (children)
def side_vlmtune(work: Path, steps: int) -> dict:
    from vlmtune.config import load_recipe
    from vlmtune.train.grpo import run_grpo

    logged, cpu = clock_vlmtune_steps()
    run_dir = work / "run-vlmtune"
    recipe = load_recipe(None, [
        *full_training(work, work / "data" / "prompts.jsonl", run_dir, LR), f"train.max_steps={steps}",
        f"grpo.num_generations={G}", f"grpo.prompts_per_step={PER_STEP}", f"grpo.max_new_tokens={NEW_TOKENS}",
        "grpo.beta=0", "grpo.temperature=1.0", "grpo.top_p=1.0", f"rewards=[{{fn: '{HERE}:length_reward'}}]"])
    summary = run_grpo(recipe, show_progress=False)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:]  # step 1 is warm-up
    return {"step_seconds": [r["step_seconds"] for r in timed], "cpu_seconds": cpu[steps] - cpu[1],
            "gen_seconds": [r.get("time/gen", 0.0) for r in timed],
            "update_seconds": [r.get("time/update", 0.0) for r in timed],
            "completion_len": statistics.mean(r["completion_len_mean"] for r in rows),
            "flops": summary["compute"]["flops_estimate"], "all_seconds": sum(r["step_seconds"] for r in rows),
            "first_step_end": logged[1]}


def side_trl(work: Path, steps: int) -> dict:
    from datasets import Dataset, Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepClock(TrainerCallback):  # wall and CPU clocks at the start and after every step
        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.cpu: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())

        on_step_end = on_train_begin

    rows = [json.loads(x) for x in (work / "data" / "prompts.jsonl").read_text().splitlines()]
    data = Dataset.from_dict({"prompt": [r["messages"] for r in rows], "image": [r["images"][0] for r in rows]})
    data = data.cast_column("image", Image())  # decoded when a row is read, as vlmtune does
    model = AutoModelForImageTextToText.from_pretrained(work / "model", dtype=torch.float32)
    # A random model samples any token; a sampled image or vision-start token makes transformers'
    # mRoPE index (which TRL's log-prob pass recomputes over prompt + completion) fail. vlmtune's
    # passes place completions after the prompt's positions and never re-read them as images.
    vision_ids = [getattr(model.config, f"{k}_token_id") for k in ("image", "video", "vision_start", "vision_end")]
    config = GRPOConfig(
        output_dir=str(work / "run-trl"), per_device_train_batch_size=PER_STEP * G, num_generations=G,
        max_completion_length=NEW_TOKENS, beta=0.0, loss_type="grpo", temperature=1.0, top_p=1.0, top_k=0,
        max_steps=steps, learning_rate=LR, lr_scheduler_type="constant", max_grad_norm=1.0,
        gradient_checkpointing=False, bf16=False, use_vllm=False, logging_steps=1, report_to=[],
        save_strategy="no", seed=0, disable_tqdm=True, generation_kwargs={"suppress_tokens": vision_ids})
    clock = StepClock()
    trainer = GRPOTrainer(model=model, reward_funcs=[length_reward], args=config, train_dataset=data,
                          processing_class=AutoProcessor.from_pretrained(work / "model"), callbacks=[clock])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    return {"step_seconds": [b - a for a, b in zip(clock.stamps[1:], clock.stamps[2:])],  # steps 2..N
            "cpu_seconds": clock.cpu[-1] - clock.cpu[1],
            "completion_len": statistics.mean(r.get("completions/mean_length", float("nan")) for r in logs)}


# --------------------------------------------------------------------------- report
def main() -> None:
    ap = side_by_side_parser(__doc__)
    ap.add_argument("--steps", type=int, default=8, help="steps per run; the first is warm-up, not timed")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of each tool (default: torch's, one per core); 1 keeps a shared machine's "
                         "other load from stalling both tools' thread pools")
    ap.add_argument("--only", choices=["vlmtune", "trl"], help="run one tool only (profiling; no ratios)")
    args = ap.parse_args()
    if args.side:  # a child: one tool, one result file
        if args.threads:
            torch.set_num_threads(args.threads)
        result = (side_vlmtune if args.side == "vlmtune" else side_trl)(args.work, args.steps)
        args.result.write_text(json.dumps({**result, "threads": torch.get_num_threads()}))
        return
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first step is warm-up)")

    if args.threads:  # the matmul rate too, at the tools' thread count
        torch.set_num_threads(args.threads)
    work = args.out or Path(tempfile.mkdtemp(prefix="grpo-vs-trl-"))
    sides = [args.only] if args.only else ["vlmtune", "trl"]
    try:
        if not (work / "model" / "config.json").is_file():
            build_model(work / "model")
            build_prompts(work / "data")
        peak_flops = matmul_flops()
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for i in range(args.pairs):
            for side in sides:
                runs[side].append(run_side(side, work, i, args.steps, args.threads))
                r = runs[side][-1]
                print(f"[{side} run {i + 1}] {statistics.mean(r['step_seconds']):.3f} s/step, "
                      f"{r['cpu_seconds'] / (args.steps - 1):.2f} CPU s/step, peak RSS {r['peak_rss_gb']:.2f} GB",
                      flush=True)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)

    timed = args.steps - 1
    fig = {side: {"s_per_step": statistics.median(statistics.mean(r["step_seconds"]) for r in rs),
                  "cpu_s_per_step": statistics.median(r["cpu_seconds"] / timed for r in rs),
                  "peak_rss_gb": statistics.median(r["peak_rss_gb"] for r in rs),
                  "completion_len": statistics.median(r["completion_len"] for r in rs)}
           for side, rs in runs.items()}
    first = next(iter(runs.values()))[0]
    print(f"\nGRPO, the issue-17 Qwen2-VL (all parameters trained), {PROMPTS} one-image prompts, "
          f"{PER_STEP} prompts x G {G} per step, {NEW_TOKENS} new tokens at most, beta 0, fp32, {first['threads']} "
          f"torch threads, steps 2-{args.steps} of {args.steps}, {args.pairs} run(s) of each (medians); load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'':26}" + "".join(f"{side:>12}" for side in fig))
    for label, key, f in [("s/step", "s_per_step", "{:.3f}"), ("CPU s/step", "cpu_s_per_step", "{:.2f}"),
                          ("peak RSS (GB)", "peak_rss_gb", "{:.2f}"),
                          ("completion tokens, mean", "completion_len", "{:.1f}")]:
        print(f"{label:26}" + "".join(f"{f.format(fig[side][key]):>12}" for side in fig))
    if "vlmtune" in runs:
        vr = runs["vlmtune"]
        gen = statistics.median(statistics.mean(r["gen_seconds"]) for r in vr)
        upd = statistics.median(statistics.mean(r["update_seconds"]) for r in vr)
        achieved = statistics.median(r["flops"] / r["all_seconds"] for r in vr)
        print(f"vlmtune phases: generation {gen:.3f} s/step, update (log-probs, backward, optimizer) {upd:.3f} "
              f"s/step; achieved {fmt_rate(achieved)} = {100 * achieved / peak_flops:.1f}% of this machine's dense "
              f"fp32 matmul rate ({fmt_rate(peak_flops)})")
    print(json.dumps({"figures": fig, "matmul_flops": peak_flops, "load_average": os.getloadavg()}, default=float))
    if len(fig) == 2:
        v, t = fig["vlmtune"], fig["trl"]
        print(f"ratios: step_speed_vlmtune_over_trl {t['s_per_step'] / v['s_per_step']:.2f}, "
              f"cpu_per_step_trl_over_vlmtune {t['cpu_s_per_step'] / v['cpu_s_per_step']:.2f}, "
              f"peak_rss_vlmtune_over_trl {v['peak_rss_gb'] / t['peak_rss_gb']:.2f}")


if __name__ == "__main__":
    main()
