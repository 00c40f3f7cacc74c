"""Choose the clarify demo's settings on the VALIDATION split (never on the held-out eval split).

Two steps, each a stage of the demo (:mod:`vlmtune.tasks.clarify.demo`) with settings overridden:

    # data, tiny model, vision warm-up, SFT on the skewed labelled set; SFT scored on validation
    python benchmarks/clarify_grpo_sweep.py prepare --out runs/sweep/l2-10 --set sft_rare_share=0.1

    # GRPO from that SFT checkpoint on the unlabelled prompts, validation curve every N steps
    python benchmarks/clarify_grpo_sweep.py grpo --out runs/sweep/l2-10 --set grpo_lr=1e-5 grpo_steps=80

A third step reports (it chooses nothing): the GRPO stage of a finished ``make demo`` run again with
other GRPO seeds, from the same SFT weights, scored on the held-out split as the demo scores it:

    python benchmarks/clarify_grpo_sweep.py seeds --out runs/demo --seeds 1 2

``--set`` takes :class:`~vlmtune.tasks.clarify.demo.DemoSettings` fields. Each run appends one JSON row
to ``OUT/sweep.jsonl``: the settings that differ from the demo's, the validation strategic accuracy
overall and per level (SFT for ``prepare``; every curve point for ``grpo``), the reward spread, and
the wall and CPU (user + system) seconds of the step, so budgets can be compared on a busy machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from vlmtune.demos import build_demo_model
from vlmtune.tasks.clarify.demo import (
    FULL, LEVELS, DemoSettings, ValidationCurve, demo_data, evaluate_model, grpo_recipe, grpo_rewards, learning_curve,
    reward_spread, sft_data, sft_recipe, warm_up_demo_vision)


def settings(pairs: list[str]) -> DemoSettings:
    """:data:`FULL` with ``key=value`` overrides (values parsed as JSON where they parse)."""
    fields = {f.name for f in dataclasses.fields(DemoSettings)}
    changes = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        if key not in fields:
            raise SystemExit(f"--set {pair}: no setting {key!r}; settings: {', '.join(sorted(fields))}")
        try:
            changes[key] = json.loads(raw)
        except json.JSONDecodeError:
            changes[key] = raw
    return dataclasses.replace(FULL, **changes)


def _changed(s: DemoSettings) -> dict:
    return {k: v for k, v in dataclasses.asdict(s).items() if v != getattr(FULL, k)}


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _record(out: Path, row: dict) -> None:
    with (out / "sweep.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))


def prepare(out: Path, s: DemoSettings) -> None:
    wall, cpu = time.perf_counter(), _cpu()
    from vlmtune.train.sft import run_sft

    data, sizes = demo_data(out / "data", s)
    model = build_demo_model(out / "tiny-qwen2_vl", s)
    if s.vision_warmup_steps:
        warm_up_demo_vision(model, data["train"], s)
    run_sft(sft_recipe(model, sft_data(data, out / "data" / "sft_train.jsonl"), out / "sft", s), show_progress=True)
    val = ValidationCurve(data["val"], out / "sft" / "final", 0, 0, s).points[0]
    (out / "prepared.json").write_text(json.dumps(dataclasses.asdict(s), indent=1))
    _record(out, {"stage": "sft", "settings": _changed(s), "data": sizes, "val": val,
                  "wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(_cpu() - cpu, 1)})


def grpo(out: Path, s: DemoSettings, name: str) -> None:
    from vlmtune.train.grpo import run_grpo

    prepared = json.loads((out / "prepared.json").read_text())
    for key in ("seed", "n_train", "n_val", "sft_rare_level", "sft_rare_share", "sft_steps"):
        if prepared[key] != getattr(s, key):
            raise SystemExit(f"{out} was prepared with {key}={prepared[key]!r}, not {getattr(s, key)!r}")
    wall, cpu = time.perf_counter(), _cpu()
    run_dir = out / "grpo" / name
    curve = ValidationCurve(out / "data" / "val.jsonl", out / "sft" / "final", s.grpo_val_every, s.grpo_steps, s)
    run_grpo(grpo_recipe(out / "sft" / "final", out / "data" / "grpo_prompts.jsonl", run_dir, s),
             show_progress=True, on_step=curve)
    _record(out, {"stage": "grpo", "name": name, "settings": _changed(s),
                  "curve": learning_curve(curve.points, grpo_rewards(run_dir)),
                  "spread": reward_spread(run_dir, s.grpo_prompts_per_step),
                  "wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(_cpu() - cpu, 1)})


def seeds(out: Path, grpo_seeds: list[int]) -> None:
    from vlmtune.train.grpo import run_grpo

    summary = json.loads((out / "summary.json").read_text())
    fields = {f.name for f in dataclasses.fields(DemoSettings)}
    demo = DemoSettings(**{k: v for k, v in summary["settings"].items() if k in fields})
    sft = summary["sft"]
    for seed in grpo_seeds:
        wall, cpu = time.perf_counter(), _cpu()
        s = dataclasses.replace(demo, grpo_seed=seed)
        run_dir = out / "grpo-seeds" / f"seed-{seed}"
        run_grpo(grpo_recipe(out / "sft" / "final", out / "data" / "grpo_prompts.jsonl", run_dir, s), show_progress=True)
        acc = evaluate_model(run_dir / "final", out / "data" / "eval.jsonl", run_dir / "eval", s, f"seed {seed}")[1][
            "strategic_accuracy"]
        _record(out, {"stage": "grpo-seed", "grpo_seed": seed, "sft": sft["strategic_accuracy"],
                      "grpo": acc["overall"], "gain": round(acc["overall"] - sft["strategic_accuracy"], 4),
                      "per_level": {lv: acc["per_level"][lv] for lv in LEVELS},
                      "wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(_cpu() - cpu, 1)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=["prepare", "grpo", "seeds"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default=None, help="grpo: the run's folder under OUT/grpo (default: from --set)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seeds", nargs="*", type=int, default=[1, 2], help="seeds: the GRPO seeds to run")
    args = ap.parse_args()
    s = settings(args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "prepare":
        prepare(args.out, s)
    elif args.step == "seeds":
        seeds(args.out, args.seeds)
    else:
        grpo(args.out, s, args.name or ("_".join(args.set) or "default").replace("/", "-"))


if __name__ == "__main__":
    main()
