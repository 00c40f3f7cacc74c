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

__all__ = ["DemoSettings", "FAST", "FULL", "ValidationCurve", "changed_responses", "demo_data", "evaluate_model",
           "grpo_recipe",
           "grpo_rewards", "learning_curve", "reward_spread", "run_demo", "sft_data", "sft_recipe",
           "warm_up_demo_vision"]

STAGES = ("baseline", "sft", "grpo")
LEVELS = ("L0", "L1", "L2", "L3")


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo's numbers depend on (see ``FULL`` and ``FAST``)."""

    n_train: int = 12000
    n_val: int = 200  # validation split: chooses settings, draws GRPO's learning curve
    n_eval: int = 200  # held-out split: the reported numbers
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
    # SFT, on the labelled set: the training split with only a share of one level's samples
    sft_rare_level: str = "L2"
    sft_rare_share: float = 0.1
    sft_steps: int = 600
    sft_batch: int = 64
    sft_lr: float = 1e-3
    sft_warmup: int = 50
    # GRPO from the SFT weights, on the whole training split as unlabelled prompts; steps and lr
    # chosen on the validation split (docs/clarify.md, benchmarks/clarify_grpo_sweep.py)
    grpo_steps: int = 75
    grpo_lr: float = 3e-5
    grpo_generations: int = 8
    grpo_prompts_per_step: int = 16
    grpo_temperature: float = 1.0
    grpo_max_new_tokens: int = 48
    grpo_seed: int | None = None  # None = seed; the GRPO stage alone varies with it
    grpo_val_every: int = 25  # validation strategic accuracy every N steps (learning curve; 0 = none)
    # eval
    eval_batch: int = 32
    eval_max_new_tokens: int = 48


FULL = DemoSettings()
FAST = DemoSettings(n_train=32, n_val=8, n_eval=16, vision_warmup_steps=2, vision_warmup_batch=4,
                    sft_steps=8, sft_batch=4, sft_warmup=2, grpo_steps=2,
                    grpo_generations=2, grpo_prompts_per_step=2, grpo_max_new_tokens=24, grpo_val_every=1,
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


def demo_data(out: Path, s: DemoSettings, prompt_variant: int = 0) -> tuple[dict[str, Path], dict[str, Any]]:
    """Synthesize the train, validation and eval splits, then cut the two training sets
    (:mod:`vlmtune.tasks.clarify.splits`): SFT's labelled file (``labelled``: the training
    split with only ``sft_rare_share`` of its ``sft_rare_level`` samples) and GRPO's unlabelled
    prompts (``prompts``: the whole training split without reference responses).

    Returns:
        The paths of :func:`make_clarify_dataset` plus ``labelled`` and ``prompts``; and the
        sizes: labelled rows per level, prompts, validation and eval rows.
    """
    from vlmtune.tasks.clarify.data import make_clarify_dataset
    from vlmtune.tasks.clarify.splits import labelled_subset, unlabelled_prompts

    data = make_clarify_dataset(out, n=s.n_train, seed=s.seed, eval_n=s.n_eval, val_n=s.n_val,
                                image_size=s.image_size, prompt_variant=prompt_variant,
                                counting_share=s.counting_share)
    data["labelled"], data["prompts"] = out / "sft_labelled.jsonl", out / "grpo_prompts.jsonl"
    labelled = labelled_subset(data["train"], data["labelled"], s.sft_rare_level, s.sft_rare_share, seed=s.seed)
    prompts = unlabelled_prompts(data["train"], data["prompts"])
    return data, {"labelled": labelled, "prompts": prompts, "val": s.n_val, "eval": s.n_eval}


def sft_data(data: dict[str, Path], out: Path) -> Path:
    """The labelled clarify samples followed by the counting questions, in one file
    (SFT shuffles); the image paths of both are relative to the same folder."""
    if "counting" not in data:
        return data["labelled"]
    with out.open("w", encoding="utf-8") as f:
        for part in (data["labelled"], data["counting"]):
            f.write(part.read_text(encoding="utf-8"))
    return out


def _run_options(s: DemoSettings, seed: int) -> list[str]:
    # output.overwrite: running the demo again into the same --out replaces its runs.
    return ["output.overwrite=true", "train.mode=full", "freeze.vision=false", "freeze.projector=false",
            "freeze.language=false", f"train.seed={seed}", "train.max_length=1024", "train.log_every=10",
            "train.save_every=425", "train.keep_last=4", f"data.num_proc={PREPASS_PROCS}"]


def sft_recipe(model: Path, train: Path, out: Path, s: DemoSettings) -> Any:
    """The demo's SFT recipe: full fine-tuning, cosine schedule, vision tower trained."""
    from vlmtune.config import load_recipe

    return load_recipe(None, [
        f"model.path={model}", f"data.train_path={train}", f"output.dir={out}", *_run_options(s, s.seed),
        f"train.max_steps={s.sft_steps}", f"train.batch_size={s.sft_batch}", f"train.lr={s.sft_lr}",
        f"train.warmup_steps={s.sft_warmup}", "train.scheduler=cosine"])


def grpo_recipe(model: Path, prompts: Path, out: Path, s: DemoSettings, judge: str | None = None,
                judge_model: str = "default") -> Any:
    """The demo's GRPO recipe: the ``aqua`` reward scored by the rule judge, or by the
    OpenAI-compatible judge at ``judge`` (a base URL); Dr. GRPO advantages, no KL term."""
    from vlmtune.config import load_recipe

    reward = ["rewards=[{fn: aqua, kwargs: {judge: rule}}]"] if judge is None else [
        "rewards=[{fn: aqua, kwargs: {judge: recipe}}]", f"judge.base_url={judge}", f"judge.model={judge_model}"]
    seed = s.seed if s.grpo_seed is None else s.grpo_seed
    return load_recipe(None, [
        f"model.path={model}", f"data.train_path={prompts}", f"output.dir={out}", *_run_options(s, seed),
        f"train.max_steps={s.grpo_steps}", f"train.lr={s.grpo_lr}", "train.scheduler=constant",
        "train.log_every=1", f"grpo.num_generations={s.grpo_generations}",
        f"grpo.prompts_per_step={s.grpo_prompts_per_step}", f"grpo.temperature={s.grpo_temperature}",
        f"grpo.max_new_tokens={s.grpo_max_new_tokens}", "grpo.loss=dr_grpo", "grpo.scale=none", "grpo.beta=0.0",
        *reward])


class ValidationCurve:
    """GRPO's learning curve on the validation split, as :func:`~vlmtune.train.grpo.run_grpo`'s
    ``on_step`` hook: the policy's greedy strategic accuracy (rule judge) before GRPO (step
    0, the SFT weights in ``model_dir``) and every ``every`` steps and at ``last_step``. The
    random state is put back after each point, so drawing the curve leaves the run as it was."""

    def __init__(self, val_path: Path, model_dir: Path, every: int, last_step: int, s: DemoSettings):
        from vlmtune.data.readers import read_samples
        from vlmtune.models.loading import load_for_inference

        self.samples, _ = read_samples(val_path, require_assistant=False)
        self.every, self.last_step, self.s = every, last_step, s
        self.points: list[dict[str, Any]] = []
        loaded = load_for_inference(model_dir)
        self.processor = loaded.processor
        self.score(0, loaded.model)

    def __call__(self, step: int, policy: Any) -> dict[str, float] | None:
        if not self.every or (step % self.every and step != self.last_step):
            return None
        point = self.score(step, policy)
        return {"val/strategic_accuracy": point["strategic_accuracy"],
                **{f"val/{lv}": v for lv, v in point["per_level"].items()}}

    def score(self, step: int, model: Any) -> dict[str, Any]:
        import torch

        from vlmtune.rollout.generator import SamplingParams, first_texts
        from vlmtune.rollout.hf import HFGenerator
        from vlmtune.tasks.clarify.task import ClarifyTask

        params = SamplingParams(max_new_tokens=self.s.eval_max_new_tokens, do_sample=False)
        with torch.random.fork_rng(devices=[]):
            generator = HFGenerator(model, self.processor, batch_size=self.s.eval_batch)
            responses = first_texts(generator.generate(self.samples, params))
        acc = ClarifyTask().score(self.samples, responses)[1]["strategic_accuracy"]
        point = {"step": step, "strategic_accuracy": float(acc["overall"]),
                 "per_level": {lv: float(acc["per_level"].get(lv, float("nan"))) for lv in LEVELS}}
        self.points.append(point)
        return point


def learning_curve(points: list[dict], rewards: list[float]) -> list[dict[str, Any]]:
    """One row per validation point: its step, validation strategic accuracy and the mean
    train reward of the steps since the previous point (None at step 0). ``rewards[i]`` is
    step ``i + 1``'s mean reward."""
    rows, prev = [], 0
    for p in points:
        window = [r for r in rewards[prev:p["step"]] if not math.isnan(r)]
        rows.append({"step": p["step"], "val_accuracy": p["strategic_accuracy"],
                     "val_per_level": p["per_level"],
                     "train_reward": round(sum(window) / len(window), 4) if window else None})
        prev = p["step"]
    return rows


def reward_spread(run_dir: Path, prompts_per_step: int) -> dict[str, float]:
    """Means over a GRPO run's steps of what its metrics say about the reward's spread inside
    groups: ``spread/*`` (the total and each logged component, :func:`~vlmtune.train.grpo.reward_spreads`)
    and the share of groups with no spread at all."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward_mean" in r]
    keys = sorted({k for r in rows for k in r if k.startswith("spread/")})
    out = {k.removeprefix("spread/"): round(sum(r[k] for r in rows if k in r) / sum(k in r for r in rows), 4)
           for k in keys}
    groups = sum(r.get("groups_zero_spread", 0) for r in rows)
    out["zero_spread_groups"] = round(groups / max(1, len(rows) * prompts_per_step), 4)
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


def evaluate_model(model: Path, data: Path, out: Path, s: DemoSettings, title: str) -> tuple[list[dict], dict]:
    """Score ``model`` on ``data`` as the demo scores a stage (greedy, rule judge): the
    prediction records and metrics, also written to ``out``."""
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
    table.caption = ("reward: mean aqua reward; answer: target colour stated (L0/L1); s: stage seconds; "
                     "gain: grpo - sft, in points")
    for col in (*LEVELS, "overall", "reward", "answer", "s"):
        table.add_column(col, justify="right")
    for stage in STAGES:
        row = summary[stage]
        pct = [f"{100 * row['per_level'][lv]:.1f}%" if not math.isnan(row["per_level"][lv]) else "–"
               for lv in LEVELS]
        answer = "–" if math.isnan(row["answer_accuracy"]) else f"{100 * row['answer_accuracy']:.1f}%"
        table.add_row(stage, *pct, f"{100 * row['strategic_accuracy']:.1f}%", f"{row['reward_mean']:.3f}",
                      answer, f"{row['seconds']:.0f}")
    gain = summary.get("gain")
    if gain:  # in points of accuracy
        table.add_row("[bold]gain[/]", *(f"{100 * gain['per_level'][lv]:+.1f}" for lv in LEVELS),
                      f"[bold]{100 * gain['strategic_accuracy']:+.1f}[/]", f"{gain['reward_mean']:+.3f}", "", "",
                      end_section=False)
    return table


def run_demo(out: Path, fast: bool = False, prompt_variant: int = 0, settings: DemoSettings | None = None,
             judge: str | None = None, judge_model: str = "default") -> dict:
    """Run the whole demo into ``out``; returns the summary written to ``out/summary.json``.

    Args:
        out: Output directory (data, model, runs, evals, report, summary.json).
        fast: A ~1-minute smoke version (tiny data, a few steps); numbers are meaningless.
        prompt_variant: System prompt of the data: 0 none, 1 short rule, 2 long rule.
        settings: Override :data:`FULL` / :data:`FAST` (experiments).
        judge: Base URL of an OpenAI-compatible judge for GRPO's reward (None: the offline
            rule judge); the evaluations always use the rule judge, so stages stay comparable.
        judge_model: The model name sent to that judge.
    """
    from vlmtune.eval.report import write_report
    from vlmtune.tasks.clarify.report import grpo_curve_section
    from vlmtune.tasks.clarify.task import ClarifyTask
    from vlmtune.train.grpo import run_grpo
    from vlmtune.train.sft import run_sft

    s = settings or (FAST if fast else FULL)
    console, clock = Console(), StageClock()
    mark = clock.mark
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    tick = time.perf_counter()
    console.print(f"[bold]1/6[/] synthesizing {s.n_train} training, {s.n_val} validation and {s.n_eval} held-out "
                  f"clarify samples ({s.image_size} px, prompt variant {prompt_variant})")
    data, sizes = demo_data(out / "data", s, prompt_variant)
    console.print(f"  SFT's labelled set: {sum(sizes['labelled'].values())} samples, {sizes['labelled']} "
                  f"({s.sft_rare_level} kept at {s.sft_rare_share:.0%}); GRPO's prompts: {sizes['prompts']}, "
                  "balanced, no reference responses")
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
        records, metrics = evaluate_model(model_dir, data["eval"], out / "eval" / stage, s, f"demo: {stage}")
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

    console.print(f"[bold]3/6[/] SFT on the labelled set: {s.sft_steps} steps x {s.sft_batch} samples, "
                  f"lr {s.sft_lr}, full, vision tower trained"
                  + ("; clarify samples + counting questions" if s.counting_share else ""))
    sft_summary = run_sft(sft_recipe(model, sft_data(data, out / "data" / "sft_train.jsonl"), out / "sft", s),
                          show_progress=True)
    mark("sft", tick)
    tick = evaluate("sft", out / "sft" / "final", tick)

    console.print(f"[bold]5/6[/] GRPO from the SFT weights on the unlabelled prompts: {s.grpo_steps} steps x "
                  f"{s.grpo_prompts_per_step} prompts x {s.grpo_generations} completions, lr {s.grpo_lr}, "
                  f"aqua reward with {'the rule judge' if judge is None else 'the judge at ' + judge}; "
                  f"validation accuracy every {s.grpo_val_every} steps")
    curve = ValidationCurve(data["val"], out / "sft" / "final", s.grpo_val_every, s.grpo_steps, s)
    grpo_summary = run_grpo(grpo_recipe(out / "sft" / "final", data["prompts"], out / "grpo", s, judge, judge_model),
                            show_progress=True, on_step=curve)
    mark("grpo", tick)
    evaluate("grpo", out / "grpo" / "final", tick)

    rewards = grpo_rewards(out / "grpo")
    summary["gain"] = _gain(summary["sft"], summary["grpo"])
    summary["grpo_learning_curve"] = learning_curve(curve.points, rewards)
    summary["grpo_reward_spread"] = reward_spread(out / "grpo", s.grpo_prompts_per_step)
    write_report(out / "report", {k: stages[k] for k in STAGES}, task=ClarifyTask(),
                 title="vlmtune demo: baseline vs SFT vs SFT+GRPO (tiny Qwen2-VL, clarify task)",
                 sections=[grpo_curve_section(summary["grpo_learning_curve"], summary["grpo_reward_spread"])])
    summary["wall_seconds"] = clock.wall()
    summary["timings"] = clock.timings
    summary["settings"] = {**asdict(s), "fast": fast, "prompt_variant": prompt_variant, "judge": judge}
    summary["data"] = sizes
    summary["train"] = {"vision_warmup": warmup, "sft_loss_last": sft_summary.get("train_loss_last"),
                        "sft_eval_loss": sft_summary.get("eval_loss"),
                        "grpo_train_reward_last": grpo_summary.get("reward_mean_last"),
                        "grpo_train_reward_curve": rewards}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))

    console.print(_table(summary, f"Strategic accuracy on {s.n_eval} held-out samples (tiny Qwen2-VL, CPU)"))
    spread = summary["grpo_reward_spread"]
    console.print("GRPO reward spread inside groups (mean std): " + ", ".join(
        f"{k} {v:.3f}" for k, v in spread.items() if k != "zero_spread_groups")
        + f"; groups with no spread {100 * spread['zero_spread_groups']:.0f}%")
    console.print("GRPO validation accuracy by step: " + ", ".join(
        f"{r['step']}: {100 * r['val_accuracy']:.1f}%" for r in summary["grpo_learning_curve"]))
    console.print(f"done in {summary['wall_seconds']:.0f} s; report {out / 'report' / 'index.html'}, "
                  f"summary {out / 'summary.json'}")
    return summary


def _gain(before: dict, after: dict) -> dict[str, Any]:
    """``after`` minus ``before``: strategic accuracy (overall and per level) and reward."""
    return {"strategic_accuracy": round(after["strategic_accuracy"] - before["strategic_accuracy"], 4),
            "per_level": {lv: round(after["per_level"][lv] - before["per_level"][lv], 4) for lv in LEVELS},
            "reward_mean": round(after["reward_mean"] - before["reward_mean"], 4)}


def grpo_rewards(run_dir: Path) -> list[float]:
    """The mean train reward of every logged step of a GRPO run (``metrics.jsonl``)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [round(r["reward_mean"], 4) for r in rows if "reward_mean" in r]
