"""``vlmtune demo --task sokoban``: the multi-turn learning proof, end to end on a tiny VLM.

build a tiny Qwen2-VL -> baseline eval -> expert trajectories (``rollout --policy solver``)
-> keep the won ones and convert them, one sample per turn (``convert --min-score 0.9
--per-turn``) -> perception warm-up of the vision tower on the expert's frames (each image
token -> the code of its cell: wall, floor, target, box, ...) -> SFT (full) -> eval ->
GiGPO from the SFT weights -> eval; and, at the same budget from the same SFT weights,
episode-level GRPO -> eval (the GiGPO paper's comparison). Every eval plays the same
held-out initial states, greedily (``rollout`` with group size 1).

Why this shape: at tiny scale RL moves decisions the model can already perceive; it does
not build perception. The warm-up and SFT teach the model to read the board and the answer
format. :data:`FULL` (chosen on validation rooms, docs/agents.md "The learning proof"): 5x5
rooms (a 3x3 floor, one box) of at most 6 moves — on 6x6 rooms the tiny model's SFT loss did
not leave the uniform guess in the budget — 1,024 expert rooms, warm-up 200 steps, SFT 500
steps (a 300-step cosine run decays before the loss leaves its plateau), RL 20 steps x 8 rooms
x 8 episodes at lr 2e-4 (4e-4 broke the answer format). Measured: SFT far above the baseline
(the SFT target is met); GiGPO and GRPO at this budget leave SFT's success where it was (the
RL target is not met).

Small rooms repeat, so the eval rooms are drawn unlike every training room
(:func:`held_out`), and the validation rooms unlike both (:func:`validation_seeds`).

``summary.json`` (public contract)::

    {"baseline": {"success_rate": float, "invalid_action_rate": float, "mean_turns": float, ...},
     "sft": {...}, "rl": {...}, "rl_grpo": {...}, "held_out": {...}, "wall_seconds": float, ...}

``rl`` is GiGPO, ``rl_grpo`` episode-level GRPO. ``held_out`` says how many eval initial
states there are, their seeds, and how many of them also occur among the training states
(expert and RL rooms), compared by their first observation (0: they are drawn that way).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from vlmtune.demos import PREPASS_PROCS, StageClock, build_demo_model, warm_up_and_save

STAGES = ("baseline", "sft", "rl", "rl_grpo")
STAGE_TITLES = {"baseline": "baseline", "sft": "SFT", "rl": "SFT + GiGPO", "rl_grpo": "SFT + GRPO"}
EVAL_SEED = 1_000_000  # eval initial states: seeds from here on; training uses seeds from 0
RL_SEED = 500_000  # RL's initial states: seeds from here on (rooms the expert data never showed)
VALIDATION_SEED = 2_000_000  # where settings are chosen (benchmarks/sokoban_budget.py), never EVAL_SEED's rooms


@dataclass(frozen=True)
class SokobanDemoSettings:
    """Everything the demo's numbers depend on (see ``FULL`` and ``FAST``)."""

    seed: int = 0
    # model shape (edits of the tiny Qwen2-VL; vlmtune.demos.build_demo_model)
    vision_patch: int | None = 14  # 14-px patches, merged 2x2: one image token per 28-px cell
    vision_depth: int | None = None
    vision_width: int | None = None
    text_layers: int | None = None
    # environment
    dim_room: int = 5  # walls included: a 3x3 floor area at most (6x6 did not learn: docs/agents.md)
    cell_size: int = 28
    max_turns: int = 6  # rooms are drawn with an optimal solution of at most this many moves
    expert_think: str = "none"  # what the expert's answers reason before the action: none, state or plan
    # expert data, perception warm-up, SFT
    expert_episodes: int = 1024
    warmup_steps: int = 200
    warmup_batch: int = 16
    warmup_positions: bool = True  # the warm-up also teaches each image token its row and column
    sft_steps: int = 500
    sft_batch: int = 16
    sft_lr: float = 1e-3
    sft_warmup: int = 10
    # RL from the SFT weights (GiGPO and GRPO at the same budget)
    rl_steps: int = 20
    rl_states_per_step: int = 8
    rl_group_size: int = 8
    rl_lr: float = 2e-4
    rl_temperature: float = 1.0
    rl_max_new_tokens: int = 16
    gamma: float = 0.95
    omega: float = 1.0
    # eval
    eval_episodes: int = 128
    eval_batch: int = 64

    def env_kwargs(self) -> dict[str, Any]:
        """The environment as every stage plays it: the brief prompt (short sequences: most
        of a tiny model's compute is the prompt) and the expert's answers as ``expert_think`` says."""
        return {"dim_room": [self.dim_room, self.dim_room], "cell_size": self.cell_size,
                "max_steps": self.max_turns, "expert_think": self.expert_think, "prompt_style": "brief"}


FULL = SokobanDemoSettings()
FAST = replace(FULL, expert_episodes=32, warmup_steps=4, warmup_batch=8, sft_steps=6, sft_batch=4, sft_warmup=1,
               rl_steps=1, rl_states_per_step=2, rl_group_size=2, max_turns=4, eval_episodes=8)


# ----------------------------------------------------------------------------- perception labels


def cell_codes(image: np.ndarray, cell_size: int) -> np.ndarray:
    """The cell code of every cell of a rendered room, read back from its colours.

    Args:
        image: ``(h * cell, w * cell, 3)`` uint8, as :class:`~vlmtune.envs.sokoban.SokobanEnv` renders.

    Returns:
        ``(h, w)`` codes (index into :data:`vlmtune.envs.sokoban.PALETTE`: wall, floor, target, ...).
    """
    from vlmtune.envs.sokoban import PALETTE

    centres = image[cell_size // 2::cell_size, cell_size // 2::cell_size].astype(int)  # (h, w, 3)
    dist = ((centres[:, :, None, :] - PALETTE[None, None].astype(int)) ** 2).sum(-1)  # (h, w, 7)
    return dist.argmin(-1)


def warm_up_perception(model_dir: Path, sft_path: Path, s: SokobanDemoSettings) -> dict[str, Any]:
    """Train the vision tower so each image token carries what its cell holds (wall, floor,
    target, box, player...) and, with ``warmup_positions``, where it is (row and column),
    on the frames of the expert data (no text, no actions); saves the model in place.

    Where matters: a token that knows only *what* it shows leaves the language model to
    work out from rotary positions alone where the player stands relative to the box, which
    a two-layer model did not learn from 1,600 SFT samples (it answered one action for
    every room)."""
    from vlmtune.data.readers import read_samples
    from vlmtune.envs.sokoban import PALETTE

    samples, _ = read_samples(sft_path)
    images = [img for x in samples for img in x.load_images()]
    codes = [cell_codes(np.asarray(img.convert("RGB")), s.cell_size) for img in images]

    def labels(i: int, rows: int, cols: int) -> list[list[int]]:
        if codes[i].shape != (rows, cols):
            raise ValueError(f"image {i}: {codes[i].shape} cells but {rows}x{cols} image tokens; the demo "
                             "needs one token per cell (cell_size = 2 x vision_patch)")
        heads = [codes[i].reshape(-1).tolist()]
        if s.warmup_positions:
            heads += [[r for r in range(rows) for _ in range(cols)], [c for _ in range(rows) for c in range(cols)]]
        return heads

    classes = (len(PALETTE), s.dim_room, s.dim_room) if s.warmup_positions else (len(PALETTE),)
    return warm_up_and_save(model_dir, images, labels, classes, steps=s.warmup_steps,
                            batch_size=s.warmup_batch, seed=s.seed)


# ----------------------------------------------------------------------------- held-out states


def _room_hash(env: Any, seed: int) -> str:
    from vlmtune.rollout.episodes import anchor_hash

    return anchor_hash(env.reset(seed=seed)[0])


def training_rooms(s: SokobanDemoSettings) -> set[str]:
    """Hashes of the first observation of every room training plays: the expert's (seeds
    from 0) and RL's (seeds from :data:`RL_SEED`)."""
    from vlmtune.envs import make_env

    env = make_env("sokoban", s.env_kwargs())
    seeds = [*range(s.expert_episodes), *range(RL_SEED, RL_SEED + s.rl_steps * s.rl_states_per_step)]
    return {_room_hash(env, seed) for seed in seeds}


def unseen_seeds(start: int, n: int, exclude: set[str], s: SokobanDemoSettings) -> list[int]:
    """The first ``n`` seeds from ``start`` whose room (first observation) is not in
    ``exclude`` nor an earlier pick's: small rooms repeat (5x5 rooms: 1,024 seeds draw ~700
    distinct ones), so consecutive seeds would replay rooms training saw."""
    from vlmtune.envs import make_env

    env, seen, picked = make_env("sokoban", s.env_kwargs()), set(exclude), []
    seed = start
    while len(picked) < n:
        if seed - start >= 100 * n:
            raise ValueError(f"fewer than {n} rooms unlike the training rooms among {100 * n} seeds from {start}; "
                             "use bigger rooms or fewer training rooms")
        room = _room_hash(env, seed)
        if room not in seen:
            picked.append(seed)
            seen.add(room)
        seed += 1
    return picked


def held_out(s: SokobanDemoSettings) -> tuple[list[int], dict[str, Any]]:
    """The eval rooms' seeds (from :data:`EVAL_SEED`, none of them a training room), and how
    many rooms there are, how many training saw (0 by construction, checked) and how many
    seeds were drawn to find them."""
    from vlmtune.envs import make_env

    train = training_rooms(s)
    seeds = unseen_seeds(EVAL_SEED, s.eval_episodes, train, s)
    env = make_env("sokoban", s.env_kwargs())
    evals = {_room_hash(env, seed) for seed in seeds}
    return seeds, {"eval_states": len(evals), "training_states": len(train), "seen_in_training": len(evals & train),
                   "seeds_drawn": seeds[-1] - EVAL_SEED + 1, "seeds": seeds}


def validation_seeds(s: SokobanDemoSettings) -> list[int]:
    """Rooms to choose settings on (seeds from :data:`VALIDATION_SEED`): neither training
    rooms nor held-out eval rooms."""
    from vlmtune.envs import make_env

    env = make_env("sokoban", s.env_kwargs())
    evals = {_room_hash(env, seed) for seed in held_out(s)[0]}
    return unseen_seeds(VALIDATION_SEED, s.eval_episodes, training_rooms(s) | evals, s)


# ----------------------------------------------------------------------------- stages


def evaluate(policy: str | Path, out: Path, s: SokobanDemoSettings, seeds: list[int]) -> dict[str, Any]:
    """Greedy episodes, one from each of ``seeds`` (:func:`held_out`'s or :func:`validation_seeds`)."""
    from vlmtune.rollout.run import run_rollout

    summary = run_rollout("sokoban", str(policy), len(seeds), out, group_size=1, seed=seeds[0],
                          max_turns=s.max_turns, env_kwargs=s.env_kwargs(), parallel=len(seeds),
                          max_new_tokens=s.rl_max_new_tokens, batch_size=s.eval_batch, show_progress=False,
                          start_seeds=seeds)
    return {k: summary[k] for k in ("success_rate", "invalid_action_rate", "mean_turns", "mean_reward",
                                    "episodes", "failed_episodes")}


def expert_data(out: Path, s: SokobanDemoSettings) -> tuple[Path, dict[str, Any]]:
    """Solver episodes from the training seeds, won ones kept, one SFT sample per turn."""
    from vlmtune.data.converters import convert
    from vlmtune.rollout.run import run_rollout

    rollout = run_rollout("sokoban", "solver", s.expert_episodes, out / "expert", group_size=1, seed=0,
                          max_turns=s.max_turns, env_kwargs=s.env_kwargs(), show_progress=False)
    result = convert("arlarena", out / "expert" / "trajectories.json", out / "data" / "sft.parquet",
                     min_score=0.9, per_turn=True, progress=False)
    return out / "data" / "sft.parquet", {"episodes": rollout["episodes"], "success_rate": rollout["success_rate"],
                                          "turn_samples": result.converted, "skipped": result.skipped}


def sft(model: Path, data: Path, out: Path, s: SokobanDemoSettings, *overrides: str,
        show_progress: bool = True) -> dict[str, Any]:
    """Full SFT on the expert's turns; ``overrides`` are extra ``key=value`` recipe settings."""
    from vlmtune.config import load_recipe
    from vlmtune.train.sft import run_sft

    recipe = load_recipe(None, [
        f"model.path={model}", f"data.train_path={data}", f"output.dir={out}", "train.mode=full",
        "freeze.vision=false", "freeze.projector=false", "freeze.language=false", f"train.seed={s.seed}",
        f"train.max_steps={s.sft_steps}", f"train.batch_size={s.sft_batch}", f"train.lr={s.sft_lr}",
        f"train.warmup_steps={s.sft_warmup}", "train.scheduler=cosine", "train.max_length=1024",
        "train.log_every=10", f"data.num_proc={PREPASS_PROCS}", *overrides])
    return run_sft(recipe, show_progress=show_progress)


def rl(model: Path, out: Path, advantage: str, s: SokobanDemoSettings) -> dict[str, Any]:
    """Multi-turn RL from ``model`` (``vlmtune grpo`` with ``env``): ``gigpo`` or ``grpo``."""
    from vlmtune.config import load_recipe
    from vlmtune.train.grpo import run_grpo

    kw = s.env_kwargs()
    recipe = load_recipe(None, [
        f"model.path={model}", f"output.dir={out}", "train.mode=full", f"train.seed={s.seed}",
        f"train.max_steps={s.rl_steps}", f"train.lr={s.rl_lr}", "train.scheduler=constant", "train.log_every=1",
        "env.name=sokoban", f"env.kwargs={json.dumps(kw)}", f"env.max_turns={s.max_turns}", f"env.seed={RL_SEED}",
        f"grpo.advantage={advantage}", f"grpo.num_generations={s.rl_group_size}",
        f"grpo.prompts_per_step={s.rl_states_per_step}", f"grpo.temperature={s.rl_temperature}",
        f"grpo.max_new_tokens={s.rl_max_new_tokens}", f"grpo.gamma={s.gamma}", f"grpo.omega={s.omega}",
        "grpo.beta=0.0"])
    return run_grpo(recipe, show_progress=True)


def _curve(run_dir: Path, key: str) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [round(r[key], 4) for r in rows if key in r]


def _table(summary: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    for col, justify in (("stage", "left"), ("success", "right"), ("invalid actions", "right"),
                         ("mean turns", "right"), ("s", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for stage in STAGES:
        row = summary[stage]
        table.add_row(STAGE_TITLES[stage], f"{100 * row['success_rate']:.1f}%",
                      f"{100 * row['invalid_action_rate']:.1f}%", f"{row['mean_turns']:.2f}", f"{row['seconds']:.0f}")
    return table


def run_sokoban_demo(out: Path, fast: bool = False, settings: SokobanDemoSettings | None = None) -> dict[str, Any]:
    """Run the whole demo into ``out``; returns the summary written to ``out/summary.json``.

    Args:
        out: Output directory (model, expert data, runs, evals, report, summary.json).
        fast: A 1-2 minute smoke version (a few steps; the numbers mean nothing).
        settings: Override :data:`FULL` / :data:`FAST` (experiments).
    """
    from vlmtune.tasks.sokoban.report import write_sokoban_report

    s = settings or (FAST if fast else FULL)
    console, clock, out = Console(), StageClock(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    tick = clock.start

    def stage(name: str, policy: Path, since: float) -> float:
        tick = clock.mark(name if name == "baseline" else f"train_{name}", since)
        summary[name] = evaluate(policy, out / "eval" / name, s, eval_seeds)
        now = clock.mark(f"eval_{name}", tick)
        summary[name]["seconds"] = round(now - since, 1)  # training + eval
        row = summary[name]
        console.print(f"  {STAGE_TITLES[name]}: success {100 * row['success_rate']:.1f}%, invalid actions "
                      f"{100 * row['invalid_action_rate']:.1f}%, mean turns {row['mean_turns']:.2f}")
        return now

    room = f"{s.dim_room}x{s.dim_room}"
    console.print(f"[bold]1/7[/] tiny Qwen2-VL; held-out eval: {s.eval_episodes} {room} rooms, greedy, "
                  f"at most {s.max_turns} turns")
    model = build_demo_model(out / "tiny-qwen2_vl", s)
    eval_seeds, summary["held_out"] = held_out(s)
    tick = clock.mark("setup", tick)
    console.print("[bold]2/7[/] baseline eval")
    tick = stage("baseline", model, tick)

    console.print(f"[bold]3/7[/] expert trajectories: {s.expert_episodes} solver episodes -> won ones, one "
                  "sample per turn")
    data, expert = expert_data(out, s)
    console.print(f"  {expert['turn_samples']} turn samples from {expert['episodes']} episodes")
    console.print(f"[bold]4/7[/] perception warm-up: {s.warmup_steps} steps x {s.warmup_batch} frames, each image "
                  "token -> its cell (wall, floor, target, box, player)")
    warmup = warm_up_perception(model, data, s)
    tick = clock.mark("expert_and_warmup", tick)

    console.print(f"[bold]5/7[/] SFT (full): {s.sft_steps} steps x {s.sft_batch} turns, lr {s.sft_lr}")
    sft_summary = sft(model, data, out / "sft", s)
    tick = stage("sft", out / "sft" / "final", tick)
    budget = (f"{s.rl_steps} steps x {s.rl_states_per_step} rooms x {s.rl_group_size} episodes, "
              f"lr {s.rl_lr}, temperature {s.rl_temperature}")
    console.print(f"[bold]6/7[/] GiGPO from the SFT weights: {budget}, gamma {s.gamma}, omega {s.omega}")
    rl(out / "sft" / "final", out / "rl", "gigpo", s)
    tick = stage("rl", out / "rl" / "final", tick)
    console.print(f"[bold]7/7[/] episode-level GRPO from the SFT weights, same budget: {budget}")
    rl(out / "sft" / "final", out / "rl_grpo", "grpo", s)
    stage("rl_grpo", out / "rl_grpo" / "final", tick)

    summary["wall_seconds"] = clock.wall()
    summary["timings"] = clock.timings
    summary["settings"] = {**asdict(s), "fast": fast, "eval_seed": EVAL_SEED}
    summary["train"] = {
        "expert": expert, "perception_warmup": warmup, "sft_loss_last": sft_summary.get("train_loss_last"),
        "rl_success_curve": _curve(out / "rl", "success_rate"),
        "rl_grpo_success_curve": _curve(out / "rl_grpo", "success_rate")}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    report = write_sokoban_report(out / "report", out / "eval", summary, STAGES, STAGE_TITLES)
    console.print(_table(summary, f"Success on {s.eval_episodes} held-out {room} rooms (tiny Qwen2-VL, CPU, greedy)"))
    console.print(f"done in {summary['wall_seconds']:.0f} s; report {report}, summary {out / 'summary.json'}")
    return summary
