"""Sokoban: generation, solver, rewards, rendering and action parsing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from vlmtune.envs import EnvLoadError, make_env
from vlmtune.envs import sokoban_levels as sk
from vlmtune.envs.sokoban import PALETTE, SokobanEnv, parse_tagged_action


def room(*rows: str) -> tuple[sk.Level, sk.State]:
    """A room from text: '#' wall, ' ' floor, 'O' target, 'X' box, '*' box on target, 'P' player."""
    floor, targets, boxes, player = set(), set(), set(), None
    for r, line in enumerate(rows):
        for c, ch in enumerate(line):
            if ch == "#":
                continue
            floor.add((r, c))
            if ch in "O*":
                targets.add((r, c))
            if ch in "X*":
                boxes.add((r, c))
            if ch == "P":
                player = (r, c)
    return sk.Level(len(rows), max(map(len, rows)), frozenset(floor), frozenset(targets)), \
        sk.State(player, frozenset(boxes))


def load(env: SokobanEnv, level: sk.Level, state: sk.State) -> None:
    """Put a hand-made room into a reset environment."""
    env.reset(seed=0)
    env.level, env.state, env._plans = level, state, {}


def act(name: str) -> str:
    return f"<action>{name}</action>"


# ---------------------------------------------------------------------------- generation and solver


def test_generated_rooms_are_solvable_on_1000_seeds() -> None:
    """Every room the environment draws is solved by its optimal plan, within max_steps, and
    the forward solver agrees with the backward distances generation used."""
    env = SokobanEnv()
    lengths = []
    for seed in range(1000):
        obs, info = env.reset(seed=seed)
        plan = env.plan()
        assert plan and len(plan) == info["optimal_steps"] <= env.max_steps, seed
        assert sk.distances_to_goal(env.level)[env.state] == len(plan), seed
        state = env.state
        for a in plan:
            state = sk.move(env.level, state, a)
        assert sk.solved(env.level, state), seed
        lengths.append(len(plan))
    # not a degenerate generator: real puzzles of several moves, of varied length
    assert np.mean(lengths) > 3 and max(lengths) >= 10 and len(set(lengths)) >= 8


def test_solver_is_optimal_on_a_hand_made_room() -> None:
    # three pushes (down, right, right) and one change of pushing side: 6 moves at best
    level, state = room("#######",
                        "#P    #",
                        "# X   #",
                        "#   O #",
                        "#######")
    plan = sk.solve(level, state)
    assert len(plan) == 6
    for a in plan:
        state = sk.move(level, state, a)
    assert sk.solved(level, state)


def test_solver_reports_unsolvable_and_dead_cells() -> None:
    level, state = room("#####",
                        "#X  #",
                        "# P #",
                        "#  O#",
                        "#####")
    assert sk.solve(level, state) is None  # the box is in a corner that is not a target
    assert (1, 1) not in sk.live_cells(level) and (3, 3) in sk.live_cells(level)
    level, state = room("######",
                        "#P XO#",
                        "######")
    assert sk.solve(level, state) == ["right", "right"]
    assert sk.solve(*room("####", "#P*#", "####")) == []


def test_generation_is_deterministic_and_rejects_impossible_requests() -> None:
    a = sk.generate(np.random.default_rng(5), 7, 7, 2, max_steps=40)
    b = sk.generate(np.random.default_rng(5), 7, 7, 2, max_steps=40)
    assert a == b and len(a[1].boxes) == 2
    with pytest.raises(RuntimeError, match="no solvable 4x4 room with 2 box"):
        sk.generate(np.random.default_rng(0), 4, 4, 2, attempts=20)


# ---------------------------------------------------------------------------- rewards and steps


def test_rewards_are_gym_sokobans() -> None:
    env = SokobanEnv()
    load(env, *room("#######",
                    "#PX O*#",
                    "#######"))
    assert env.step(act("left"))[1] == pytest.approx(-0.1)  # into the wall: a step, nothing moves
    assert env.step(act("right"))[1] == pytest.approx(-0.1)  # box pushed onto floor
    _, r, terminated, _, info = env.step(act("right"))  # box onto the target: +1, and solved: +10
    assert (r, terminated, info["won"]) == (pytest.approx(10.9), True, True)

    load(env, *room("#######",
                    "# P*  #",
                    "#  X O#",
                    "#######"))
    _, r, *_ = env.step(act("right"))  # box pushed off its target
    assert r == pytest.approx(-1.1)


def test_invalid_actions_cost_the_penalty_change_nothing_and_are_counted() -> None:
    env = SokobanEnv(max_steps=4, invalid_penalty=0.25)
    obs, _ = env.reset(seed=1)
    bad = ["", "up", "<action>jump</action>", "<action>up or down</action>", "<action>up", "\x00\xff" * 500]
    for i, text in enumerate(bad[:4], 1):
        new, r, terminated, truncated, info = env.step(text)
        assert r == pytest.approx(-0.25) and not terminated
        assert info["action_valid"] is False and info["action"] == "invalid" and info["invalid_actions"] == i
        assert np.array_equal(new, obs)
    assert truncated  # the fourth step used up max_steps
    env.reset(seed=1)
    for text in bad:
        assert env.step(text)[4]["action_valid"] is False


@pytest.mark.parametrize("text,action", [
    ("<action>up</action>", "up"),
    ("<think>the box is left of me</think><action>Left</action>", "left"),
    ("<think>hmm</think>\n<action> move DOWN </action>", "down"),
    ("<think><action>up</action></think><action>right</action>", "right"),  # actions in the reasoning don't count
    ("<action>right</action><action>left</action>", "right"),  # the first one
    ("<action>up</action> <think>late</think>", "up"),
    ("up", None), ("<action>up", None), ("<action></action>", None), ("<action>still</action>", None),
    ("<action>up or left</action>", None), ("<action>upward</action>", None), ("", None),
])
def test_action_parsing(text: str, action: str | None) -> None:
    assert parse_tagged_action(text, ("up", "down", "left", "right")) == action


# ---------------------------------------------------------------------------- rendering and API


def test_rendering_is_deterministic_per_seed_with_flat_cells() -> None:
    a, b = SokobanEnv(cell_size=20), SokobanEnv(cell_size=20)
    obs_a, _ = a.reset(seed=7)
    obs_b, _ = b.reset(seed=7)
    assert obs_a.shape == (120, 120, 3) and obs_a.dtype == np.uint8
    assert np.array_equal(obs_a, obs_b)
    assert not np.array_equal(obs_a, b.reset(seed=8)[0])
    grid = sk.to_grid(a.level, a.state)
    centres = obs_a[10::20, 10::20]  # one pixel from the middle of each cell
    assert np.array_equal(centres, PALETTE[grid])
    assert np.array_equal(obs_a[12:18, 12:18], np.broadcast_to(PALETTE[grid[0, 0]], (6, 6, 3)))  # flat inside


def test_passes_gymnasiums_env_checker() -> None:
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no spec": we do not register with gymnasium.make
        check_env(SokobanEnv())


@pytest.mark.parametrize("kwargs,match", [
    ({"num_boxes": 0}, "num_boxes must be"), ({"dim_room": [3, 3]}, "dim_room must be at least"),
    ({"cell_size": 2}, "cell_size"), ({"max_steps": 0}, "max_steps"), ({"boxes": 2}, "unexpected keyword"),
    ({"prompt_style": "short"}, "prompt_style must be one of"), ({"expert_think": "yes"}, "expert_think must be"),
])
def test_bad_arguments_are_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(EnvLoadError, match=match) as e:
        make_env("sokoban", kwargs)
    assert "environment 'sokoban'" in str(e.value)


def test_expert_reasoning_styles_and_the_brief_prompt() -> None:
    full = SokobanEnv()
    short = SokobanEnv(expert_think="none", prompt_style="brief")
    state = SokobanEnv(expert_think="state", dim_room=(6, 6))
    for env in (full, short, state):
        env.reset(seed=3)
    plan = full.plan()
    assert full.expert_action() == (f"<think>A shortest solution from here takes {len(plan)} move(s): "
                                    f"{', '.join(plan)}.</think><action>{plan[0]}</action>")
    assert short.expert_action() == f"<action>{plan[0]}</action>"
    (pr, pc), (box,), (target,) = state.state.player, state.state.boxes, state.level.targets
    assert state.expert_action() == (f"<think>you {pr},{pc} box {box[0]},{box[1]} target {target[0]},{target[1]}"
                                     f"</think><action>{plan[0]}</action>")
    text = state.text_observation().split("\n")
    assert text[pr].split()[pc] in "PS" and text[box[0]].split()[box[1]] in "X√"
    brief = short.prompt([], 0)
    assert brief.count("<image>") == 1 and "Sokoban" in brief and len(brief) < len(full.prompt([], 0)) / 3
    assert short.parse_action(short.expert_action()) == plan[0]
