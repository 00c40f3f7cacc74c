"""``vlmtune demo`` (the clarify task's ``demo`` hook): the ambiguity-aware task end to end on
a tiny model built on the spot.

synthesize clarify data (type-first references; optional counting questions) -> vision
warm-up (per-token shape type and colour; :mod:`vlmtune.train.vision_warmup`) -> baseline
eval -> SFT (full) -> eval -> GRPO from the SFT weights with the offline rule judge
(``aqua`` reward; Dr. GRPO advantages, not divided by the group's spread, so a colour slip
(reward 1 vs 0.7) weighs a third of a wrong strategy (1 vs 0) instead of as much) -> eval;
then print a table of strategic accuracy per level and mean reward per stage, write
``OUT/summary.json`` and ``OUT/report/index.html`` (the three stages side by side).

``summary.json`` (public contract)::

    {"baseline": {"strategic_accuracy": float, "per_level": {"L0": float, ...}, "reward_mean": float},
     "sft": {...}, "grpo": {...}, "wall_seconds": float, ...}

Each stage also reports ``answer_accuracy``: the share of unambiguous (L0/L1) eval questions
whose response states the target's colour and no other colour of the image
(:func:`vlmtune.tasks.clarify.metrics.answer_stated`), i.e. whether the model reads the asked shape,
and ``changed``: how many eval responses differ from the previous stage's (None for the
baseline), the size of the stage's effect even when its gains and losses cancel out.

``reward_mean`` of a stage is the mean ``aqua`` reward (rule judge: 1 right strategy, 0.7
right strategy with a false statement, 0 wrong strategy) of the stage's greedy responses
on the held-out eval split, so the three stages are scored on the same prompts.

The tiny model is the factory's Qwen2-VL (:func:`vlmtune.demos.build_demo_model`) with its
saved ``config.json`` edited to the demo's shape (:class:`DemoSettings`: vision depth and
width, text layers) and re-initialised from that config with the same seed. Everything
is deterministic by seed; timings depend on the machine.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vlmtune.demos import PREPASS_PROCS, StageClock, build_demo_model, warm_up_and_save

__all__ = ["DemoSettings", "FAST", "FULL", "changed_responses", "run_demo", "sft_data", "warm_up_demo_vision"]

STAGES = ("baseline", "sft", "grpo")
LEVELS = ("L0", "L1", "L2", "L3")


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo's numbers depend on (see ``FULL`` and ``FAST``)."""

    n_train: int = 12000
    n_eval: int = 200
    image_size: int = 168
    seed: int = 0
    # model shape (edits of the tiny Qwen2-VL config; None = factory value)
    vision_patch: int | None = 28  # 28 at 168 px: one merged image token per grid cell
    vision_depth: int | None = None
    vision_width: int | None = None
    text_layers: int | None = None
    # data: counting questions per training image, trained with the clarify samples
    counting_share: float = 0.0
    # vision warm-up (stands in for a pretrained vision encoder; 0 = none)
    vision_warmup_steps: int = 300
    vision_warmup_batch: int = 32
    # SFT
    sft_steps: int = 600
    sft_batch: int = 64
    sft_lr: float = 1e-3
    sft_warmup: int = 50
    # GRPO (from the SFT weights)
    grpo_steps: int = 10
    grpo_lr: float = 1e-6  # TRL's and verl's default; see docs/clarify.md for larger ones
    grpo_generations: int = 8
    grpo_prompts_per_step: int = 8
    grpo_temperature: float = 1.0
    grpo_max_new_tokens: int = 48
    # eval
    eval_batch: int = 32
    eval_max_new_tokens: int = 48


FULL = DemoSettings()
FAST = DemoSettings(n_train=32, n_eval=16, vision_warmup_steps=2, vision_warmup_batch=4,
                    sft_steps=8, sft_batch=4, sft_warmup=2, grpo_steps=2,
                    grpo_generations=2, grpo_prompts_per_step=2, grpo_max_new_tokens=24,
                    eval_batch=16, eval_max_new_tokens=24)


def warm_up_demo_vision(model_dir: Path, train_path: Path, s: DemoSettings) -> dict[str, Any]:
    """Train the demo model's vision tower on each image token's cell (shape type, colour),
    from the scene facts of the training samples; saves the model back in place."""
    from vlmtune.data.readers import read_samples
    from vlmtune.tasks.clarify.data import COLOURS, TYPES, cell_labels

    samples, _ = read_samples(train_path)
    scenes = [x.meta["scene"] for x in samples]
    return warm_up_and_save(model_dir, _LazyImages(samples), lambda i, h, w: cell_labels(scenes[i], h, w),
                            (len(TYPES) + 1, len(COLOURS) + 1), steps=s.vision_warmup_steps,
                            batch_size=s.vision_warmup_batch, seed=s.seed)


class _LazyImages:
    """Index -> the sample's first image, decoded when asked for (6,000 images stay on disk)."""

    def __init__(self, samples: list) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.samples[i].load_images()[0]


def sft_data(data: dict[str, Path], out: Path) -> Path:
    """The clarify training samples followed by the counting questions, in one file
    (SFT shuffles); the image paths of both are relative to the same folder."""
    if "counting" not in data:
        return data["train"]
    with out.open("w", encoding="utf-8") as f:
        for part in (data["train"], data["counting"]):
            f.write(part.read_text(encoding="utf-8"))
    return out


def _reward_mean(eval_dir: Path, data_path: Path) -> float:
    """Mean rule-judge ``aqua`` reward of the stage's eval responses."""
    from vlmtune.data.readers import read_samples
    from vlmtune.tasks.clarify.rewards import aqua

    samples, _ = read_samples(data_path, require_assistant=False)
    responses = [json.loads(x)["response"] for x in (eval_dir / "predictions.jsonl").read_text().splitlines()]
    if len(samples) != len(responses):
        raise RuntimeError(f"{eval_dir}: {len(responses)} predictions for {len(samples)} samples")
    prompts = [s.messages[:-1] if s.messages[-1]["role"] == "assistant" else s.messages for s in samples]
    rewards = aqua(prompts=prompts, completions=[[{"role": "assistant", "content": r}] for r in responses],
                   level=[s.meta.get("level") for s in samples], facts=[s.meta.get("facts") for s in samples],
                   judge="rule")
    valid = [r for r in rewards if r is not None]
    return sum(valid) / len(valid) if valid else float("nan")


def _evaluate(model: Path, data: Path, out: Path, s: DemoSettings, title: str) -> tuple[list[dict], dict]:
    from vlmtune.eval.run import run_eval

    metrics = run_eval(model, data, task="clarify", out_dir=out, batch_size=s.eval_batch,
                       max_new_tokens=s.eval_max_new_tokens, judge="rule", show_progress=False, title=title)
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    return records, metrics


def changed_responses(before: list[dict], after: list[dict]) -> int:
    """How many eval questions got a different response in ``after`` than in ``before``
    (prediction records matched by ``id``): the size of a stage's effect, which the
    accuracy and reward alone hide when changes cancel out."""
    old = {r["id"]: r["response"] for r in before}
    new = {r["id"]: r["response"] for r in after}
    if old.keys() != new.keys():
        raise ValueError(f"the two stages scored different questions ({len(old.keys() ^ new.keys())} ids differ)")
    return sum(old[i] != new[i] for i in old)


def _stage_summary(metrics: dict, reward: float, seconds: float) -> dict[str, Any]:
    acc = metrics.get("strategic_accuracy") or {}
    per_level = acc.get("per_level") or {}
    answer = ((metrics.get("groups") or {}).get("unambig") or {}).get("answer_accuracy")
    return {"strategic_accuracy": float(acc.get("overall", float("nan"))),
            "per_level": {lv: float(per_level.get(lv, float("nan"))) for lv in LEVELS},
            "reward_mean": float(reward),
            "answer_accuracy": float("nan") if answer is None else float(answer),
            "seconds": round(seconds, 1)}


def _table(summary: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("stage")
    table.caption = "reward: mean aqua reward; answer: target colour stated (L0/L1); s: stage seconds"
    for col in (*LEVELS, "overall", "reward", "answer", "s"):
        table.add_column(col, justify="right")
    for stage in STAGES:
        row = summary[stage]
        pct = [f"{100 * row['per_level'][lv]:.1f}%" if not math.isnan(row["per_level"][lv]) else "–"
               for lv in LEVELS]
        answer = "–" if math.isnan(row["answer_accuracy"]) else f"{100 * row['answer_accuracy']:.1f}%"
        table.add_row(stage, *pct, f"{100 * row['strategic_accuracy']:.1f}%", f"{row['reward_mean']:.3f}",
                      answer, f"{row['seconds']:.0f}")
    return table


def run_demo(out: Path, fast: bool = False, prompt_variant: int = 0,
             settings: DemoSettings | None = None) -> dict:
    """Run the whole demo into ``out``; returns the summary written to ``out/summary.json``.

    Args:
        out: Output directory (data, model, runs, evals, report, summary.json).
        fast: A ~1-minute smoke version (tiny data, a few steps); numbers are meaningless.
        prompt_variant: System prompt of the data: 0 none, 1 short rule, 2 long rule.
        settings: Override :data:`FULL` / :data:`FAST` (experiments).
    """
    from vlmtune.config import load_recipe
    from vlmtune.eval.report import write_report
    from vlmtune.tasks.clarify.data import make_clarify_dataset
    from vlmtune.tasks.clarify.task import ClarifyTask
    from vlmtune.train.grpo import run_grpo
    from vlmtune.train.sft import run_sft

    s = settings or (FAST if fast else FULL)
    console, clock = Console(), StageClock()
    mark = clock.mark
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    tick = time.perf_counter()
    console.print(f"[bold]1/6[/] synthesizing {s.n_train} + {s.n_eval} clarify samples ({s.image_size} px, "
                  f"prompt variant {prompt_variant})")
    data = make_clarify_dataset(out / "data", n=s.n_train, seed=s.seed, eval_n=s.n_eval,
                                image_size=s.image_size, prompt_variant=prompt_variant,
                                counting_share=s.counting_share)
    model = build_demo_model(out / "tiny-qwen2_vl", s)
    tick = mark("setup", tick)
    warmup: dict[str, Any] = {}
    if s.vision_warmup_steps:
        console.print(f"[bold]1b/6[/] vision warm-up: {s.vision_warmup_steps} steps x {s.vision_warmup_batch} "
                      "images, each image token -> its cell's shape type and colour (no text, no levels)")
        warmup = warm_up_demo_vision(model, data["train"], s)
        console.print(f"  per-token accuracy: type {100 * warmup['accuracy'][0]:.1f}%, "
                      f"colour {100 * warmup['accuracy'][1]:.1f}%")
        tick = mark("vision_warmup", tick)

    stages: dict[str, tuple[list[dict], dict]] = {}
    summary: dict[str, Any] = {}

    def evaluate(stage: str, model_dir: Path, since: float) -> float:
        tick = time.perf_counter()
        records, metrics = _evaluate(model_dir, data["eval"], out / "eval" / stage, s, f"demo: {stage}")
        stages[stage] = (records, metrics)
        reward = _reward_mean(out / "eval" / stage, data["eval"])
        now = mark(f"eval_{stage}", tick)
        summary[stage] = _stage_summary(metrics, reward, now - since)  # training + eval
        before = STAGES[STAGES.index(stage) - 1] if STAGES.index(stage) else None
        changed = summary[stage]["changed"] = changed_responses(stages[before][0], records) if before else None
        console.print(f"  {stage}: strategic accuracy {100 * summary[stage]['strategic_accuracy']:.1f}%, "
                      f"reward {reward:.3f}" + (f"; {changed}/{len(records)} responses changed" if before else ""))
        return now

    console.print("[bold]2/6[/] baseline eval (language model still random)")
    tick = evaluate("baseline", model, tick)

    console.print(f"[bold]3/6[/] SFT: {s.sft_steps} steps x {s.sft_batch} samples, lr {s.sft_lr}, full, "
                  "vision tower trained" + ("; clarify samples + counting questions" if s.counting_share else ""))
    sft_train = sft_data(data, out / "data" / "sft_train.jsonl")
    # output.overwrite: running the demo again into the same --out replaces its runs.
    common = ["output.overwrite=true", "train.mode=full", "freeze.vision=false", "freeze.projector=false",
              "freeze.language=false", f"train.seed={s.seed}", "train.max_length=1024", "train.log_every=10",
              "train.save_every=425", "train.keep_last=4", f"data.num_proc={PREPASS_PROCS}"]
    sft_recipe = load_recipe(None, [
        f"model.path={model}", f"data.train_path={sft_train}", f"output.dir={out / 'sft'}", *common,
        f"train.max_steps={s.sft_steps}", f"train.batch_size={s.sft_batch}", f"train.lr={s.sft_lr}",
        f"train.warmup_steps={s.sft_warmup}", "train.scheduler=cosine"])
    sft_summary = run_sft(sft_recipe, show_progress=True)
    mark("sft", tick)
    tick = evaluate("sft", out / "sft" / "final", tick)

    console.print(f"[bold]5/6[/] GRPO from the SFT weights: {s.grpo_steps} steps x {s.grpo_prompts_per_step} "
                  f"prompts x {s.grpo_generations} completions, aqua reward with the rule judge")
    grpo_recipe = load_recipe(None, [
        f"model.path={out / 'sft' / 'final'}", f"data.train_path={data['train']}", f"output.dir={out / 'grpo'}",
        *common, f"train.max_steps={s.grpo_steps}", f"train.lr={s.grpo_lr}", "train.scheduler=constant",
        "train.log_every=1", f"grpo.num_generations={s.grpo_generations}",
        f"grpo.prompts_per_step={s.grpo_prompts_per_step}", f"grpo.temperature={s.grpo_temperature}",
        f"grpo.max_new_tokens={s.grpo_max_new_tokens}", "grpo.loss=dr_grpo", "grpo.scale=none", "grpo.beta=0.0",
        "rewards=[{fn: aqua, kwargs: {judge: rule}}]"])
    grpo_summary = run_grpo(grpo_recipe, show_progress=True)
    mark("grpo", tick)
    evaluate("grpo", out / "grpo" / "final", tick)

    write_report(out / "report", {k: stages[k] for k in STAGES}, task=ClarifyTask(),
                 title="vlmtune demo: baseline vs SFT vs SFT+GRPO (tiny Qwen2-VL, clarify task)")
    summary["wall_seconds"] = clock.wall()
    summary["timings"] = clock.timings
    summary["settings"] = {**asdict(s), "fast": fast, "prompt_variant": prompt_variant}
    summary["train"] = {"vision_warmup": warmup, "sft_loss_last": sft_summary.get("train_loss_last"),
                        "sft_eval_loss": sft_summary.get("eval_loss"),
                        "grpo_train_reward_last": grpo_summary.get("reward_mean_last"),
                        "grpo_train_reward_curve": _grpo_rewards(out / "grpo")}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))

    console.print(_table(summary, f"Strategic accuracy on {s.n_eval} held-out samples (tiny Qwen2-VL, CPU)"))
    console.print(f"done in {summary['wall_seconds']:.0f} s; report {out / 'report' / 'index.html'}, "
                  f"summary {out / 'summary.json'}")
    return summary


def _grpo_rewards(run_dir: Path) -> list[float]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [round(r["reward_mean"], 4) for r in rows if "reward_mean" in r]
