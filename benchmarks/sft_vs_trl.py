"""SFT side by side with TRL's ``SFTTrainer``: processed tokens/s, s/step and peak memory of
each tool, each in a process of its own, on a real-shaped small Qwen2-VL and mixed-length data.

    HF_HUB_OFFLINE=1 python benchmarks/sft_vs_trl.py [--pairs 1] [--out DIR]

Setup (issue 17), built offline here from the tiny-model factory's tokenizer and processor:
a Qwen2-VL with text hidden 512, 6 layers, 8 heads / 4 KV heads, intermediate 1536, vocab
1,024, mRoPE sections [8, 12, 12]; vision depth 4, width 256, 4 heads, patch 14, merge 2
(random weights, seed 0); image processor min/max pixels 56²/224² (written into the model
folder, so both tools read the same). 96 training samples with 1-3 images each, squares of
112 to 224 px, and answers of 4 to 120 words (uniform, seeded): a mixed-length distribution,
where padding costs what it costs on real data. Batch 8, 12 steps (one epoch), AdamW at a
constant lr of 1e-4, gradients clipped to norm 1, float32, full fine-tuning with the vision
tower and projector trainable. Everything else is each tool's default (vlmtune: padding-free
packing; TRL: padded batches), except that TRL is held to the setup where its defaults
differ: bf16 off, activation checkpointing off, loss on the assistant turns only.

Each tool runs in a fresh process (``--side``), started by this script, which reads the
child's peak resident memory from the operating system (``wait4``) and its timings from a
JSON file the child writes. ``--pairs N`` runs vlmtune and TRL N times in turn (A B A B ...)
and reports each figure's median.

- tokens/s: the real (non-padding) tokens of the epoch, as each tool tokenizes them, over the
  seconds of the 12 steps (reading images, image processor, collation, forward, backward,
  clipping, optimizer step; the first step included). vlmtune: the sum of ``step_seconds``;
  TRL: ``on_train_begin`` to the last ``on_step_end``.
- time to first step: from the process start to the end of the first optimizer step (model
  loading, data checks and tokenization, and the step itself).
- CPU s/step: the process's CPU seconds (all threads) over steps 2-12, per step; steadier than
  wall time when other processes share the cores.
- peak RSS: the child process's largest resident set size.
- FLOP/s share: vlmtune's training FLOPs (its compute report, per part of the model) per
  second of its steps, against this machine's dense float32 matmul rate, measured in this
  run (a 2048² x 2048² ``torch.mm``, same thread count).

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
from child import clock_vlmtune_steps, run_child, side_by_side_parser, since_start

HERE = Path(__file__).resolve()
STEPS, BATCH, LR, N_SAMPLES = 12, 8, 1e-4, 96


# --------------------------------------------------------------------------- set-up (parent)
def build_data(out: Path, n: int = N_SAMPLES, seed: int = 0) -> Path:
    """``n`` canonical samples: 1-3 images (squares of 112-224 px, a shape drawn on each), a
    question, an answer of 4-120 words from the tiny tokenizer's vocabulary."""
    from vlmtune.data.builtin import COLOURS, SHAPES, draw_shape
    from vlmtune.models.tiny import build_corpus

    rng = random.Random(seed)
    words = sorted({w for line in build_corpus() for w in line.split() if w.isalpha()})
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        images = []
        for j in range(rng.randint(1, 3)):
            path = out / "images" / f"{i:03d}-{j}.png"
            draw_shape(rng, rng.choice(SHAPES), COLOURS[rng.choice(list(COLOURS))], rng.randint(112, 224)).save(path)
            images.append(str(path))
        answer = " ".join(rng.choice(words) for _ in range(rng.randint(4, 120))) + "."
        rows.append({"messages": [
            {"role": "user", "content": [*({"type": "image"} for _ in images),
                                         {"type": "text", "text": "Describe the pictures."}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}], "images": images})
    path = out / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_side(side: str, work: Path, index: int) -> dict:
    """One tool in a fresh process: its result file plus the peak RSS the kernel reports."""
    result = work / f"result-{side}-{index}.json"
    return run_child([str(HERE), "--side", side, "--work", str(work), "--result", str(result)], result)


# --------------------------------------------------------------------------- the two sides (children)
def side_vlmtune(work: Path) -> dict:
    from vlmtune.config import load_recipe
    from vlmtune.train.sft import run_sft

    logged, cpu = clock_vlmtune_steps()
    run_dir = work / "run-vlmtune"
    recipe = load_recipe(None, [*full_training(work, work / "data" / "train.jsonl", run_dir, LR),
                                f"train.max_steps={STEPS}", f"train.batch_size={BATCH}"])
    summary = run_sft(recipe, show_progress=False)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    compute = summary["compute"]
    return {"train_seconds": sum(r["step_seconds"] for r in rows), "tokens": compute["train_tokens"],
            "first_step_end": logged[1], "cpu_after_first": cpu[STEPS] - cpu[1],
            "losses": [r["loss"] for r in rows], "train_flops": compute["flops_estimate"],
            "trainable": summary["trainable_params"], "packing": summary["packing"]}


def side_trl(work: Path) -> dict:
    from datasets import Dataset, Image, List
    from transformers import AutoModelForImageTextToText, AutoProcessor, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.cpu: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())
            if len(self.stamps) == 2:
                self.first_step_end = since_start()

    rows = [json.loads(x) for x in (work / "data" / "train.jsonl").read_text().splitlines()]
    data = Dataset.from_dict({"messages": [r["messages"] for r in rows], "images": [r["images"] for r in rows]})
    data = data.cast_column("images", List(Image()))  # decoded when a row is read, as vlmtune does
    model = AutoModelForImageTextToText.from_pretrained(work / "model", dtype=torch.float32)
    config = SFTConfig(
        output_dir=str(work / "run-trl"), per_device_train_batch_size=BATCH, max_steps=STEPS, learning_rate=LR,
        lr_scheduler_type="constant", max_grad_norm=1.0, assistant_only_loss=True, activation_checkpointing=False,
        bf16=False, logging_steps=1, report_to=[], save_strategy="no", seed=0, disable_tqdm=True)
    clock = StepClock()
    trainer = SFTTrainer(model=model, args=config, train_dataset=data,
                         processing_class=AutoProcessor.from_pretrained(work / "model"), callbacks=[clock])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    return {"train_seconds": clock.stamps[-1] - clock.stamps[0], "tokens": int(logs[-1]["num_tokens"]),
            "first_step_end": clock.first_step_end, "cpu_after_first": clock.cpu[-1] - clock.cpu[0], "losses": [r["loss"] for r in logs],
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


# --------------------------------------------------------------------------- report
def main() -> None:
    args = side_by_side_parser(__doc__).parse_args()
    if args.side:  # a child: one tool, one result file
        result = (side_vlmtune if args.side == "vlmtune" else side_trl)(args.work)
        args.result.write_text(json.dumps({**result, "threads": torch.get_num_threads()}))
        return

    work = args.out or Path(tempfile.mkdtemp(prefix="sft-vs-trl-"))
    try:
        build_model(work / "model")
        build_data(work / "data")
        peak_flops = matmul_flops()
        runs: dict[str, list[dict]] = {"vlmtune": [], "trl": []}
        for i in range(args.pairs):
            for side in runs:
                runs[side].append(run_side(side, work, i))
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    fig = {side: {"tokens_per_s": statistics.median(r["tokens"] / r["train_seconds"] for r in rs),
                  "s_per_step": med(side, "train_seconds") / STEPS, "peak_rss_gb": med(side, "peak_rss_gb"),
                  "first_step_s": med(side, "first_step_end"), "tokens": med(side, "tokens"),
                  "cpu_s_per_step": med(side, "cpu_after_first") / (STEPS - 1),
                  "loss_last": statistics.median(r["losses"][-1] for r in rs)}
           for side, rs in runs.items()}
    v, t = fig["vlmtune"], fig["trl"]
    achieved = statistics.median(r["train_flops"] / r["train_seconds"] for r in runs["vlmtune"])
    print(f"\nSFT, Qwen2-VL {runs['vlmtune'][0]['trainable'] / 1e6:.1f} M parameters (all trained), {N_SAMPLES} mixed "
          f"samples, batch {BATCH}, {STEPS} steps, fp32, {runs['vlmtune'][0]['threads']} torch threads, "
          f"{args.pairs} run(s) of each (medians); load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'':24}{'vlmtune':>12}{'TRL':>12}")
    for label, key, f in [("tokens/s", "tokens_per_s", "{:.0f}"), ("s/step", "s_per_step", "{:.3f}"),
                          ("CPU s/step, steps 2-12", "cpu_s_per_step", "{:.2f}"),
                          ("peak RSS (GB)", "peak_rss_gb", "{:.2f}"), ("time to 1st step (s)", "first_step_s", "{:.1f}"),
                          ("tokens in the epoch", "tokens", "{:.0f}"), ("loss, last step", "loss_last", "{:.4f}")]:
        print(f"{label:24}{f.format(v[key]):>12}{f.format(t[key]):>12}")
    print(f"vlmtune achieved {fmt_rate(achieved)} of training FLOPs = {100 * achieved / peak_flops:.1f}% of this "
          f"machine's dense fp32 matmul rate ({fmt_rate(peak_flops)}); vlmtune packing: {runs['vlmtune'][0]['packing']}")
    ratios = {"tokens_per_s_vlmtune_over_trl": v["tokens_per_s"] / t["tokens_per_s"],
              "cpu_per_step_trl_over_vlmtune": t["cpu_s_per_step"] / v["cpu_s_per_step"],
              "peak_rss_vlmtune_over_trl": v["peak_rss_gb"] / t["peak_rss_gb"],
              "first_step_vlmtune_over_trl": v["first_step_s"] / t["first_step_s"]}
    print(json.dumps({"vlmtune": v, "trl": t, "matmul_flops": peak_flops, "vlmtune_flops_per_s": achieved,
                      "load_average": os.getloadavg()}, default=float))
    print("ratios: " + ", ".join(f"{k} {x:.2f}" for k, x in ratios.items()))


if __name__ == "__main__":
    main()
