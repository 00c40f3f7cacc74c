"""``vlmtune demo --task sokoban``: the pieces against known values, the fast demo's public
outputs (its numbers mean nothing: a few steps), and the full demo's targets (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from vlmtune.envs import sokoban_levels as sk
from vlmtune.envs.sokoban import SokobanEnv
from vlmtune.rollout.episodes import anchor_hash
from vlmtune.tasks.sokoban.demo import FAST, STAGES, cell_codes, held_out, training_rooms, unseen_seeds, validation_seeds

KEYS = ("success_rate", "invalid_action_rate", "mean_turns")


def test_cell_codes_read_the_rendered_room_back():
    env = SokobanEnv(cell_size=28)
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        env.step("<action>left</action>")
        obs = env.render()
        assert np.array_equal(cell_codes(obs, 28), sk.to_grid(env.level, env.state))


def test_eval_rooms_are_held_out():
    seeds, h = held_out(FAST)
    assert len(seeds) == FAST.eval_episodes == h["eval_states"] and h["seen_in_training"] == 0


def test_unseen_seeds_skip_training_rooms_and_repeats():
    # 5x5 rooms repeat: consecutive seeds would replay rooms training saw
    kw = FAST.env_kwargs()
    env = SokobanEnv(**kw)
    first = {anchor_hash(env.reset(seed=x)[0]) for x in range(50)}
    picked = unseen_seeds(0, 10, first, FAST)
    rooms = [anchor_hash(env.reset(seed=x)[0]) for x in picked]
    assert len(set(rooms)) == 10 and not set(rooms) & first and min(picked) >= 50
    train = training_rooms(FAST)
    assert not {anchor_hash(env.reset(seed=x)[0]) for x in validation_seeds(FAST)} & train


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from vlmtune.cli import main

    out = tmp_path_factory.mktemp("sokoban-demo")
    assert main(["demo", "--task", "sokoban", "--fast", "--out", str(out)]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_fast_demo_summary(fast_demo: tuple[Path, dict]):
    out, summary = fast_demo
    for stage in STAGES:
        row = summary[stage]
        assert 0.0 <= row["success_rate"] <= 1.0 and 0.0 <= row["invalid_action_rate"] <= 1.0
        assert 1.0 <= row["mean_turns"] <= FAST.max_turns and row["episodes"] == FAST.eval_episodes
        # the stage's numbers are its own eval's, played on the same held-out rooms
        evald = json.loads((out / "eval" / stage / "summary.json").read_text())
        assert {k: evald[k] for k in KEYS} == {k: row[k] for k in KEYS}
        assert evald["start_seeds"] == summary["held_out"]["seeds"] and evald["group_size"] == 1
        assert min(evald["start_seeds"]) >= summary["settings"]["eval_seed"]
    assert summary["held_out"]["seen_in_training"] == 0
    assert summary["settings"]["fast"] is True and summary["wall_seconds"] > 0
    assert summary["train"]["expert"]["turn_samples"] > 0


def test_fast_demo_rl_stages_start_from_sft(fast_demo: tuple[Path, dict]):
    out, _ = fast_demo
    for run, advantage in (("rl", "gigpo"), ("rl_grpo", "grpo")):
        cfg = yaml.safe_load((out / run / "config.yaml").read_text())
        assert Path(cfg["model"]["path"]) == out / "sft" / "final"
        assert cfg["grpo"]["advantage"] == advantage and cfg["env"]["name"] == "sokoban"
        rows = [json.loads(x) for x in (out / run / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == FAST.rl_steps and "success_rate" in rows[0]


def test_fast_demo_report(fast_demo: tuple[Path, dict]):
    out, _ = fast_demo
    html = (out / "report" / "index.html").read_text(encoding="utf-8")
    for title in ("SFT + GiGPO", "SFT + GRPO", "baseline"):
        assert title in html
    assert '<svg id="chart"' in html
    frames = html.count('src="data:image/png;base64,')
    assert frames >= len(STAGES) * 4  # four rooms, every stage, at least a turn each


@pytest.mark.slow
def test_full_demo_meets_targets(tmp_path: Path):
    """The issue's targets on the same held-out rooms: SFT >= baseline + 20 points, GiGPO >= SFT
    + 10 points, at most 15 minutes on 2 cores."""
    from vlmtune.tasks.sokoban.demo import run_sokoban_demo

    s = run_sokoban_demo(tmp_path / "demo")
    assert s["held_out"]["seen_in_training"] == 0
    assert s["sft"]["success_rate"] >= s["baseline"]["success_rate"] + 0.20
    assert s["rl"]["success_rate"] >= s["sft"]["success_rate"] + 0.10
    assert s["wall_seconds"] <= 900
