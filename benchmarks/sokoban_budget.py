"""Choose the Sokoban demo's settings on validation rooms: success of SFT checkpoints and of
multi-turn RL from one of them, scored on rooms that are neither trained on nor the demo's
reported held-out rooms (seeds from ``VALIDATION_SEED``).

Runs the demo's own stages (:mod:`vlmtune.tasks.sokoban.demo`) with settings from the
command line: the tiny model, expert data, perception warm-up, SFT with a checkpoint every
``--eval-every`` steps (each scored greedily), then optionally GiGPO and GRPO from the
checkpoint ``--rl-from`` (each scored the same way). Prints one JSON line per scored model.

    python benchmarks/sokoban_budget.py --out runs/sokoban-budget --sft-steps 300 --eval-every 50
    python benchmarks/sokoban_budget.py --out runs/sokoban-budget --reuse --rl-from 100 --rl-steps 20

Timings depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

from vlmtune.demos import build_demo_model
from vlmtune.tasks.sokoban.demo import FULL, evaluate, expert_data, rl, sft, validation_seeds, warm_up_perception
from vlmtune.train.checkpoint import checkpoints


def settings_from(args: argparse.Namespace):
    fields = {f.name for f in dataclasses.fields(FULL)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return dataclasses.replace(FULL, **given)


def loadable(ckpt: Path, model_dir: Path) -> Path:
    """A checkpoint holds weights; rollout also needs the config and processor files."""
    for f in model_dir.iterdir():
        if f.suffix in (".json", ".jinja") and not (ckpt / f.name).exists():
            shutil.copy(f, ckpt / f.name)
    return ckpt


def score(name: str, policy: Path, out: Path, s, seeds: list[int]) -> dict:
    tick = time.perf_counter()
    row = {"model": name, **evaluate(policy, out, s, seeds),
           "eval_seconds": round(time.perf_counter() - tick, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reuse", action="store_true", help="keep the model, data and SFT run already in --out")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--rl-from", type=int, default=None, help="SFT step whose checkpoint RL starts from")
    ap.add_argument("--advantages", default="gigpo,grpo")
    for f in dataclasses.fields(FULL):
        kind = {bool: lambda x: x.lower() in ("1", "true", "yes")}.get(type(f.default), type(f.default))
        if f.default is None:
            kind = int
        ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None)
    args = ap.parse_args()
    s = settings_from(args)
    out = args.out
    print(json.dumps({"settings": dataclasses.asdict(s)}), flush=True)
    model = out / "tiny-qwen2_vl"
    seeds = validation_seeds(s)
    if not args.reuse:
        out.mkdir(parents=True, exist_ok=True)
        build_demo_model(model, s)
        data, expert = expert_data(out, s)
        warm = warm_up_perception(model, data, s)
        print(json.dumps({"expert": expert, "warmup": warm}), flush=True)
        tick = time.perf_counter()
        # every checkpoint kept; a checkpoint mid-way through the cosine schedule is not the same
        # as a shorter run, so confirm a chosen step count with a run of that length
        sft(model, data, out / "sft", s, f"train.save_every={args.eval_every}", "train.keep_last=100",
            "output.overwrite=true", show_progress=False)
        print(json.dumps({"sft_seconds": round(time.perf_counter() - tick, 1)}), flush=True)
        for ckpt in checkpoints(out / "sft"):
            score(f"sft-{ckpt.name}", loadable(ckpt, model), out / "val" / ckpt.name, s, seeds)
    if args.rl_from is not None:
        start = loadable(out / "sft" / "checkpoints" / f"step-{args.rl_from}", model)
        for adv in args.advantages.split(","):
            tick = time.perf_counter()
            run = out / f"rl-{adv}-from{args.rl_from}"
            shutil.rmtree(run, ignore_errors=True)
            rl(start, run, adv, s)
            print(json.dumps({"rl": adv, "seconds": round(time.perf_counter() - tick, 1)}), flush=True)
            score(run.name, run / "final", out / "val" / run.name, s, seeds)


if __name__ == "__main__":
    main()
