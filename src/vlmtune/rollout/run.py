"""``vlmtune rollout``: play episodes in an environment and write them as ARLArena does.

N episodes in groups of G (N/G initial states, each played G times: GiGPO's and ARLArena's
``env.rollout.n``), by one of three policies: ``solver`` (the environment's expert, standing
in for the pretrained model ARLArena samples from), ``random``, or a model directory (full
or adapter; batched generation, sampling when G > 1, greedy otherwise). Episodes run
``parallel`` at a time, all their turns batched.

Outputs in ``out``:

- ``trajectories.json`` — ARLArena's ``eval_game_agent.py`` shape: a list of
  ``{sample_idx, task_score, turns: [{step, inputs: [{role, content}], outputs, image:
  {format: "png_base64", data}}]}``; ``inputs`` is the turn's one user message with its
  ``<image>`` marker, ``image`` the observation it shows, ``task_score`` 1.0 for a won
  episode else 0.0. Feed it to SFT with ``vlmtune convert --from arlarena … --min-score 0.9``.
  Episodes that failed before their first turn have nothing to show and are left out (they
  are in the two files below);
- ``episodes.jsonl`` — one line per episode: index, seed, group, success, total reward,
  turns, invalid actions, error, and per turn the action, validity, reward, done and anchor
  (observation hash) that step-level credit assignment (GiGPO) groups by;
- ``summary.json`` — ``success_rate``, ``episodes``, ``mean_turns``, ``invalid_action_rate``
  (invalid actions / turns), ``mean_reward``, ``failed_episodes`` with their errors, timing
  and the settings of the run.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmtune.envs.registry import EnvLoadError, make_env, parse_env_kwargs
from vlmtune.rollout.episodes import (Episode, Policy, RolloutError, expert_policy, generator_policy, play_episodes,
                                      random_policy)

POLICIES = ("solver", "random")


def group_seeds(episodes: int, group_size: int, seed: int) -> tuple[list[int], list[int]]:
    """Reset seeds and group ids: episode i is in group i // G and starts from seed + group."""
    if episodes < 1 or group_size < 1:
        raise RolloutError(f"episodes and group size must be >= 1, got {episodes} and {group_size}")
    if episodes % group_size:
        raise RolloutError(f"episodes ({episodes}) must be a multiple of the group size ({group_size})")
    groups = [i // group_size for i in range(episodes)]
    return [seed + g for g in groups], groups


def model_policy(model_dir: str | Path, *, sample: bool, temperature: float = 1.0, max_new_tokens: int = 256,
                 batch_size: int = 8, base_model: str | None = None, seed: int = 0) -> Policy:
    """Batched generation with a model directory (full model or adapter)."""
    import torch

    from vlmtune.models.loading import load_for_inference
    from vlmtune.rollout.generator import SamplingParams, build_generator

    loaded = load_for_inference(model_dir, base_model=base_model)
    gen = build_generator("hf", loaded.model, loaded.processor, batch_size=batch_size)
    torch.manual_seed(seed)
    return generator_policy(gen, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                do_sample=sample))


# ---------------------------------------------------------------------------- records


def trajectory_record(ep: Episode) -> dict[str, Any]:
    """One trajectory in ARLArena's ``eval_game_agent.py`` shape."""
    turns = [{"step": t.step, "inputs": [{"role": "user", "content": t.prompt_text}], "outputs": t.response,
              "image": {"format": "png_base64", "data": base64.b64encode(t.png).decode("ascii")}} for t in ep.turns]
    return {"sample_idx": ep.index, "task_score": 1.0 if ep.success else 0.0, "turns": turns}


def _json_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)


def episode_record(ep: Episode) -> dict[str, Any]:
    return {"episode": ep.index, "seed": ep.seed, "group": ep.group, "success": ep.success,
            "total_reward": round(ep.total_reward, 6), "turns": len(ep.turns),
            "invalid_actions": ep.invalid_actions, "error": ep.error,
            "steps": [{"step": t.step, "action": _json_value(t.info.get("action")),
                       "action_valid": bool(t.info.get("action_valid", True)), "reward": t.reward,
                       "done": t.done, "anchor": t.anchor} for t in ep.turns]}


def summarize(episodes: Sequence[Episode]) -> dict[str, Any]:
    """Success rate, mean turns, invalid-action rate (over turns), mean reward, failures."""
    n = len(episodes)
    turns = sum(len(e.turns) for e in episodes)
    failed = [e for e in episodes if e.error is not None]
    return {
        "episodes": n,
        "success_rate": sum(e.success for e in episodes) / n if n else 0.0,
        "mean_turns": turns / n if n else 0.0,
        "invalid_action_rate": sum(e.invalid_actions for e in episodes) / turns if turns else 0.0,
        "mean_reward": round(sum(e.total_reward for e in episodes) / n, 6) if n else 0.0,
        "turns": turns,
        "failed_episodes": len(failed),
        "errors": [{"episode": e.index, "seed": e.seed, "error": e.error} for e in failed],
    }


def write_outputs(out: Path, episodes: Sequence[Episode], summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    trajectories = [trajectory_record(e) for e in episodes if e.turns]
    (out / "trajectories.json").write_text(json.dumps(trajectories, ensure_ascii=False, indent=2), encoding="utf-8")
    with (out / "episodes.jsonl").open("w", encoding="utf-8") as f:
        for e in episodes:
            f.write(json.dumps(episode_record(e), ensure_ascii=False) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")


# ---------------------------------------------------------------------------- the run


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), disable=not enabled)


def _env_policy(name: str, envs: list, seed: int, first_index: int) -> Policy:
    return expert_policy(envs, first_index) if name == "solver" else random_policy(envs, seed, first_index)


def run_rollout(env: str, policy: str, episodes: int, out_dir: str | Path, *, group_size: int = 1, seed: int = 0,
                max_turns: int | None = None, history: int = 0, env_kwargs: dict[str, Any] | None = None,
                parallel: int = 32, max_new_tokens: int = 256, temperature: float = 1.0, batch_size: int = 8,
                base_model: str | None = None, show_progress: bool = True,
                start_seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Play ``episodes`` episodes and write the outputs (module docstring); returns the summary.

    ``start_seeds``, when given, is the reset seed of each group (``episodes / group_size``
    of them) instead of ``seed, seed + 1, ...``: e.g. initial states chosen to be unlike
    some others (the sokoban demo's held-out rooms).

    Raises:
        EnvLoadError: unknown environment or arguments it rejects.
        ModelLoadError: ``policy`` is neither a built-in nor a loadable model directory.
        RolloutError: bad counts (episodes not a multiple of the group size, ...), or a
            policy the environment cannot serve (solver without an expert).
    """
    seeds, groups = group_seeds(episodes, group_size, seed)
    if start_seeds is not None:
        if len(start_seeds) != episodes // group_size:
            raise RolloutError(f"{len(start_seeds)} group seeds for {episodes // group_size} groups")
        seeds = [int(start_seeds[g]) for g in groups]
    if parallel < 1 or history < 0 or (max_turns is not None and max_turns < 1):
        raise RolloutError("parallel and max_turns must be >= 1 and history >= 0")
    chunk = max(group_size, parallel // group_size * group_size)
    if policy not in POLICIES and not Path(policy).exists():
        near = difflib.get_close_matches(policy, POLICIES, n=1)
        raise RolloutError(f"--policy must be {' or '.join(POLICIES)} or a model directory; {policy!r} is none of "
                           f"these." + (f" Did you mean {near[0]!r}?" if near else ""))
    envs = [make_env(env, env_kwargs) for _ in range(min(chunk, episodes))]
    model = None
    if policy in POLICIES:
        _env_policy(policy, envs, seed, 0)  # fail now if the environment lacks the method
    else:
        model = model_policy(policy, sample=group_size > 1, temperature=temperature, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, base_model=base_model, seed=seed)
    start = time.perf_counter()
    played: list[Episode] = []
    with _progress(show_progress) as progress:
        bar = progress.add_task(f"rollout {env}", total=episodes, info="")
        wins = 0

        def on_episode(ep: Episode) -> None:
            nonlocal wins
            wins += ep.success
            progress.advance(bar)
            finished = progress.tasks[bar].completed
            rate = finished / max(time.perf_counter() - start, 1e-9)
            progress.update(bar, info=f"{rate:.2f} ep/s  success {wins / finished:.0%}")

        for lo in range(0, episodes, chunk):
            hi = min(lo + chunk, episodes)
            act = model or _env_policy(policy, envs, seed, lo)
            played += play_episodes(envs[: hi - lo], seeds[lo:hi], act, groups=groups[lo:hi], max_turns=max_turns,
                                    history=history, first_index=lo, on_episode=on_episode)
    seconds = time.perf_counter() - start
    summary = summarize(played)
    summary.update({"env": env, "env_kwargs": env_kwargs or {}, "policy": str(policy), "group_size": group_size,
                    "seed": seed, **({"start_seeds": [int(x) for x in start_seeds]} if start_seeds is not None else {}),
                    "max_turns": max_turns, "history": history, "seconds": round(seconds, 3),
                    "episodes_per_second": round(len(played) / seconds, 3) if seconds > 0 else None})
    write_outputs(Path(out_dir), played, summary)
    return summary


def add_rollout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", required=True, help="environment: a built-in name (vlmtune env list), "
                                                "module:Class or path/to/file.py:Class")
    p.add_argument("--policy", required=True, help="solver (the environment's expert), random, or a model directory")
    p.add_argument("--episodes", type=int, required=True, help="episodes in all (a multiple of --group-size)")
    p.add_argument("--group-size", type=int, default=1, help="episodes per initial state (G); sampling when G > 1")
    p.add_argument("--seed", type=int, default=0, help="seed of the first initial state; group g uses seed + g")
    p.add_argument("--max-turns", type=int, help="turn limit per episode (default: the environment's max_steps)")
    p.add_argument("--history", type=int, default=0, help="past (observation, action) pairs in each prompt (K)")
    p.add_argument("--env-kwargs", nargs="*", default=[], metavar="K=V",
                   help="environment arguments, values read as YAML: dim_room=[7,7] num_boxes=2")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--parallel", type=int, default=32, help="episodes played at once (rounded to whole groups)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="model policy: tokens per response")
    p.add_argument("--temperature", type=float, default=1.0, help="model policy: sampling temperature (G > 1)")
    p.add_argument("--batch-size", type=int, default=8, help="model policy: prompts per generate call")
    p.add_argument("--base-model", help="model policy: base model of an adapter directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_rollout(args: argparse.Namespace) -> int:
    try:
        summary = run_rollout(args.env, args.policy, args.episodes, args.out, group_size=args.group_size,
                              seed=args.seed, max_turns=args.max_turns, history=args.history,
                              env_kwargs=parse_env_kwargs(args.env_kwargs), parallel=args.parallel,
                              max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              batch_size=args.batch_size, base_model=args.base_model,
                              show_progress=not args.no_progress)
    except (EnvLoadError, RolloutError) as exc:
        print(f"vlmtune rollout: error: {exc}", file=sys.stderr)
        return 2
    brief = {k: summary[k] for k in ("episodes", "success_rate", "mean_turns", "invalid_action_rate", "mean_reward",
                                     "failed_episodes", "episodes_per_second")}
    print(json.dumps(brief, indent=1))
    print(f"wrote {Path(args.out) / 'trajectories.json'}, episodes.jsonl and summary.json")
    return 0
