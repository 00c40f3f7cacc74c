"""``vlmtune demo``: the main job on the embedded default, on a tiny model built on the spot.

Today: build a tiny Qwen2-VL, write the built-in shapes data set, fine-tune it fully and
print the loss curve. (The ambiguity-aware pipeline replaces this when it lands.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vlmtune.config import load_recipe
from vlmtune.data.builtin import make_shapes_dataset
from vlmtune.models.tiny import make_tiny
from vlmtune.train.sft import run_sft


def run_demo(out: Path, fast: bool = False) -> dict:
    console, start = Console(), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model = out / "tiny-qwen2_vl"
    if not (model / "config.json").exists():
        make_tiny("qwen2_vl", model)
    data = make_shapes_dataset(out / "data", n=16 if fast else 64, seed=0, eval_n=8)
    steps = 15 if fast else 120
    recipe = load_recipe(None, [
        f"model.path={model}", f"data.train_path={data}", f"data.eval_path={data.parent / 'eval.jsonl'}",
        f"output.dir={out / 'sft'}", "train.mode=full", "train.lr=1e-3", f"train.max_steps={steps}",
        "train.batch_size=4", "train.warmup_steps=5", "train.max_length=512", f"eval.every={max(steps // 4, 1)}"])
    summary = run_sft(recipe, show_progress=True)
    rows = [json.loads(x) for x in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    table = Table(title="SFT on the built-in shapes data (tiny Qwen2-VL, CPU)")
    for col in ("step", "train loss", "eval loss"):
        table.add_column(col, justify="right")
    for r in rows:
        if "loss" in r and ("eval_loss" in r or r["step"] in (1, steps)):
            table.add_row(str(r["step"]), f"{r.get('loss', float('nan')):.4f}",
                          f"{r['eval_loss']:.4f}" if "eval_loss" in r else "")
    console.print(table)
    summary["wall_seconds"] = round(time.perf_counter() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    console.print(f"done in {summary['wall_seconds']} s; run dir {out / 'sft'}")
    return summary
