"""Strategic accuracy of the demo's SFT stage against training time (the clarify task).

Builds the demo's tiny model, synthesizes the clarify data, runs full SFT with a checkpoint
every ``--eval-every`` steps and scores every checkpoint on the held-out split (greedy,
rule judge). Prints one row per checkpoint: step, minutes of training so far, samples seen,
strategic accuracy overall and per level, and answer accuracy (the gold colour stated
for unambiguous questions: whether the model reads the asked shape at all). Use it to see
what a longer budget than ``make demo`` buys, or to compare model shapes and batch sizes.

    python benchmarks/clarify_budget.py --steps 600 --batch 64 --eval-every 150

Minutes are wall time measured from the start of SFT to each checkpoint's write, so they
depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from vlmtune.config import load_recipe
from vlmtune.tasks.clarify.data import make_clarify_dataset
from vlmtune.demos import PREPASS_PROCS, build_demo_model
from vlmtune.tasks.clarify.demo import DemoSettings, sft_data, warm_up_demo_vision
from vlmtune.eval.run import run_eval
from vlmtune.train.checkpoint import checkpoints
from vlmtune.train.sft import run_sft


def evaluate_checkpoints(run_dir: Path, model_dir: Path, eval_path: Path, started: float) -> list[dict]:
    """Score every complete ``run_dir/checkpoints/step-N`` in step order."""
    rows = []
    for ckpt in checkpoints(run_dir):
        minutes = (ckpt.stat().st_mtime - started) / 60  # before the copies below touch the folder
        for f in model_dir.iterdir():  # checkpoints hold weights; eval also needs config + processor
            if f.suffix in (".json", ".jinja") and not (ckpt / f.name).exists():
                shutil.copy(f, ckpt / f.name)
        m = run_eval(ckpt, eval_path, task="clarify", out_dir=run_dir / f"eval-{ckpt.name}", batch_size=32,
                     max_new_tokens=48, judge="rule", show_progress=False)
        acc = m["strategic_accuracy"]
        rows.append({"step": int(ckpt.name.split("-")[1]), "minutes": round(minutes, 2),
                     "overall": acc["overall"], **{lv: acc["per_level"][lv] for lv in ("L0", "L1", "L2", "L3")},
                     "answer": m["groups"]["unambig"]["answer_accuracy"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-train", type=int, default=12000)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--patch", type=int, default=28, help="vision patch size (28: one token per grid cell)")
    ap.add_argument("--counting-share", type=float, default=0.0, help="counting questions per training image")
    ap.add_argument("--vision-warmup", type=int, default=300, help="vision warm-up steps (0 = none)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="clarify-budget-"))
    s = DemoSettings(n_train=args.n_train, n_eval=args.n_eval, vision_patch=args.patch,
                     counting_share=args.counting_share, vision_warmup_steps=args.vision_warmup)
    data = make_clarify_dataset(out / "data", n=s.n_train, seed=s.seed, eval_n=s.n_eval,
                                counting_share=s.counting_share)
    model = build_demo_model(out / "model", s)
    if s.vision_warmup_steps:
        warm_up_demo_vision(model, data["train"], s)
    train_path = sft_data(data, out / "data" / "sft_train.jsonl")
    run_dir = out / "sft"
    started = time.time()
    run_sft(load_recipe(None, [
        f"model.path={model}", f"data.train_path={train_path}", f"output.dir={run_dir}", "train.mode=full",
        "output.overwrite=true",  # a re-run with the same --out replaces the run
        "freeze.vision=false", "freeze.projector=false", f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch}", f"train.lr={args.lr}", "train.warmup_steps=50", "train.scheduler=cosine",
        f"data.num_proc={PREPASS_PROCS}",
        f"train.save_every={args.eval_every}", "train.keep_last=1000", "train.max_length=1024"]), show_progress=True)
    rows = evaluate_checkpoints(run_dir, model, data["eval"], started)
    print(f"{'step':>6} {'min':>6} {'samples':>8} {'overall':>8} {'L0':>6} {'L1':>6} {'L2':>6} {'L3':>6} {'answer':>7}")
    for r in rows:
        print(f"{r['step']:>6} {r['minutes']:>6.1f} {r['step'] * args.batch:>8} {100 * r['overall']:>7.1f}% "
              + " ".join(f"{100 * r[lv]:>5.1f}%" for lv in ("L0", "L1", "L2", "L3")) + f" {100 * r['answer']:>6.1f}%")
    (out / "budget.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                                indent=1))
    print(f"wrote {out / 'budget.json'}")


if __name__ == "__main__":
    main()
