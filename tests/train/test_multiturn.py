"""Multi-turn RL in the GRPO engine: the advantage math against hand-computed values and the
single-turn formula, the episode batch, and ``vlmtune grpo`` with ``env:`` on a tiny model
(GiGPO on Sokoban, malformed actions, failing and user environments, the ARLArena loop)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmtune.cli import main
from vlmtune.config import ConfigError, load_recipe
from vlmtune.rollout.episodes import Episode, Turn, anchor_hash, prompt_sample
from vlmtune.rollout.generator import Completion, SamplingParams
from vlmtune.rollout.hf import Rollout
from vlmtune.train.advantages import episode_advantages, gigpo_advantages, group_advantages
from vlmtune.train.multiturn import (
    EpisodeCollector,
    episode_metrics,
    segment_groups,
    turn_advantages,
)

USER_ENVS = Path(__file__).resolve().parents[1] / "envs" / "user_envs.py"


# ----------------------------------------------------------------------------- advantage math


def test_episode_grpo_hand_computed():
    # two groups of G=2: scores (1, 0) and (0, 0); episode 0 has two steps, the others one or three
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0])
    episode_of_step = torch.tensor([0, 0, 1, 2, 3, 3, 3])
    adv = episode_advantages(scores, 2, episode_of_step, "group", eps=1e-4)
    a = 0.5 / (0.5**0.5 + 1e-4)  # centred 0.5, unbiased std sqrt(0.5); the flat group gets 0
    assert adv.tolist() == pytest.approx([a, a, -a, 0.0, 0.0, 0.0, 0.0])


def test_episode_grpo_of_one_step_episodes_is_the_single_turn_formula():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    one_step = torch.arange(8)
    for scale in ("group", "batch", "none"):
        assert torch.equal(episode_advantages(scores, 4, one_step, scale), group_advantages(scores, 4, scale))


def test_failed_episode_is_left_out_of_its_group():
    scores = torch.tensor([1.0, float("nan"), 0.0])
    adv = episode_advantages(scores, 3, torch.tensor([0, 1, 2]), "none")
    assert adv.tolist() == pytest.approx([0.5, 0.0, -0.5])  # mean over the two valid episodes


def _cfg(*overrides: str):
    return load_recipe(None, ["env.name=sokoban", "grpo.num_generations=2", *overrides]).grpo


def test_turn_advantages_follow_the_recipe(tmp_path: Path):
    scores = torch.tensor([1.0, 0.0])
    episode_of_step = torch.tensor([0, 0, 1])
    rewards = torch.tensor([0.0, 1.0, 0.0])
    anchors = ["A", "B", "A"]
    adv, groups = turn_advantages(_cfg(), scores, episode_of_step, rewards, anchors)
    assert torch.equal(adv, episode_advantages(scores, 2, episode_of_step, "group"))
    assert groups.tolist() == [0, 1, 0]
    want = gigpo_advantages(scores, 2, episode_of_step, rewards, anchors, gamma=0.5, omega=2.0, norm="mean")
    got = turn_advantages(_cfg("grpo.advantage=gigpo", "grpo.gamma=0.5", "grpo.omega=2", "grpo.gigpo_norm=mean"),
                          scores, episode_of_step, rewards, anchors)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    # a user's estimator by file.py:fn, called like gigpo_advantages
    (tmp_path / "adv.py").write_text(
        "import torch\n"
        "def last_step_only(scores, g, episode_of_step, rewards, anchors, **kw):\n"
        "    last = torch.cat([episode_of_step[1:] != episode_of_step[:-1], torch.tensor([True])])\n"
        "    return last.float() * scores[episode_of_step], torch.zeros_like(episode_of_step)\n")
    adv, _ = turn_advantages(_cfg(f"grpo.advantage={tmp_path / 'adv.py'}:last_step_only"), scores,
                             episode_of_step, rewards, anchors)
    assert adv.tolist() == [0.0, 1.0, 0.0]


def test_gigpo_defaults_are_the_papers_sokoban_setup():
    r = load_recipe(None, ["env.name=sokoban", "grpo.advantage=gigpo"])
    assert (r.grpo.gamma, r.grpo.omega, r.grpo.num_generations) == (0.95, 1.0, 8)
    assert load_recipe(None, []).grpo.num_generations == 4  # single-turn default unchanged


def test_multi_turn_recipe_errors(tmp_path: Path):
    from vlmtune.train.grpo import run_grpo

    cases = [(["grpo.advantage=gigpo", "rewards=[{fn: exact_match}]"], "multi-turn estimator: set env.name"),
             (["env.name=sokoban"], "needs train.max_steps > 0"),
             (["env.name=sokoban", "train.max_steps=1", "rewards=[{fn: exact_match}]"], "remove 'rewards'"),
             (["env.name=sokoban", "train.max_steps=1", "grpo.drop_zero_spread=true"], "drop_zero_spread")]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            run_grpo(load_recipe(None, [f"output.dir={tmp_path / 'x'}", *overrides]), show_progress=False)
    with pytest.raises(ConfigError, match="did you mean 'sokoban'"):
        load_recipe(None, ["env.name=sokobn"])


# ----------------------------------------------------------------------------- the episode batch


def _turn(step: int, colour: int, history: str = "", reward: float = 0.0, response: str = "go") -> Turn:
    obs = np.full((8, 8, 3), colour, dtype=np.uint8)
    text = f"{history}Light: <image> go or wait?"
    return Turn(step, prompt_sample(text, obs, {"episode": 0, "step": step}), text, anchor_hash(obs), response,
                reward, False, {"action_valid": response in ("go", "wait")})


def test_segment_groups_merge_identical_prompts_only():
    turns = [_turn(0, 10), _turn(0, 10), _turn(1, 20), _turn(1, 10, history="[go] "), _turn(2, 20)]
    assert segment_groups(turns) == [[0, 1], [2, 4], [3]]


def test_turns_with_one_prompt_make_one_padded_group():
    a = Completion(torch.tensor([5, 6, 9]), "x", "stop")
    b = Completion(torch.tensor([7, 9]), "y", "stop")
    turn = _turn(0, 1)
    r = Rollout.of(turn.prompt, {"input_ids": torch.ones(1, 4, dtype=torch.long)}, [a, b], pad_id=0)
    assert r.completion_ids.tolist() == [[5, 6, 9], [7, 9, 0]]
    assert r.mask.tolist() == [[1, 1, 1], [1, 1, 0]] and r.texts == ["x", "y"] and r.sample is turn.prompt


def test_episode_metrics():
    won = Episode(0, 0, 0, [_turn(0, 1, reward=1.0), _turn(1, 2, reward=10.0)], success=True)
    lost = Episode(1, 0, 0, [_turn(0, 1, reward=-0.1, response="jump")])
    broken = Episode(2, 1, 1, [], error="reset: OSError: level file missing")
    m = episode_metrics([won, lost, broken], torch.tensor([0, 1, 0]))
    assert m["success_rate"] == pytest.approx(1 / 3)
    assert m["episode_return_mean"] == pytest.approx(10.9 / 3)
    assert m["invalid_action_rate"] == pytest.approx(1 / 3) and m["episodes_failed"] == 1
    assert (m["anchor_group_size_mean"], m["anchor_group_size_max"], m["anchor_groups_singleton_frac"]) == \
        (1.5, 2.0, 0.5)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> Path:
    return tiny_model_dir("qwen2_vl")


def test_collector_batch_of_one_turn_episodes_is_single_turn_grpo(tiny: Path, tmp_path: Path):
    """One-turn episodes: the batch's advantages are exactly the single-turn engine's for the
    same rewards, turns with one prompt form one group, and a failed episode is not trained."""
    from vlmtune.batching.render import render_prompt
    from vlmtune.models.loading import load_for_inference
    from vlmtune.rollout.hf import HFGenerator

    loaded = load_for_inference(tiny)
    recipe = load_recipe(None, [f"env.name={USER_ENVS}:TrafficLightEnv", "grpo.num_generations=4",
                                "grpo.prompts_per_step=2"])
    gen = HFGenerator(loaded.model, loaded.processor)
    collector = EpisodeCollector(recipe.env, recipe.grpo, gen, SamplingParams(),
                                 lambda s: render_prompt(s, gen.processor), gen.pad_id, tmp_path)
    scores = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    episodes = []
    for i, s in enumerate(scores):
        turn = _turn(0, 10 if i < 4 else 20, response="go" if s else "wait")
        episodes.append(Episode(i, i // 4, i // 4, [turn], success=bool(s)))
        collector.policy.records[(i, 0)] = Completion(torch.tensor([11 + i, 3]), turn.response, "stop")
    batch = collector.build(episodes)
    assert [r.completion_ids.shape[0] for r in batch.rollouts] == [4, 4]
    assert torch.allclose(batch.advantages, group_advantages(torch.tensor(scores), 4, "group"))
    assert batch.rollouts[0].completion_ids[:, 0].tolist() == [11, 12, 13, 14]  # the sampled tokens, in order

    episodes[5].error, episodes[5].success = "step 0: RuntimeError: simulator crashed", False
    batch = collector.build(episodes)
    assert [r.completion_ids.shape[0] for r in batch.rollouts] == [4, 3]
    rest = torch.tensor([1.0, 1.0, 0.0])  # group 1 without the failed episode
    assert torch.allclose(batch.advantages[4:], (rest - rest.mean()) / (rest.std() + 1e-4))
    assert batch.metrics["episodes_failed"] == 1
    errors = [json.loads(x) for x in (tmp_path / "env_errors.jsonl").read_text().splitlines()]
    assert errors == [{"seed": 1, "group": 1, "turns": 1, "error": "step 0: RuntimeError: simulator crashed"}]


# ----------------------------------------------------------------------------- the engine, end to end


def _grpo(model: Path, out: Path, *overrides: str) -> dict:
    from vlmtune.train.grpo import run_grpo

    recipe = load_recipe(None, [f"model.path={model}", f"output.dir={out}", "grpo.num_generations=2",
                                "grpo.prompts_per_step=2", "grpo.max_new_tokens=6", "train.max_steps=2",
                                "train.lr=1e-3", *overrides])
    return run_grpo(recipe, show_progress=False)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_gigpo_on_sokoban_with_malformed_actions(tiny: Path, tmp_path: Path):
    """A random-weight model writes no admissible action: every turn is penalised and
    counted, no episode crashes, and every logged quantity is there."""
    summary = _grpo(tiny, tmp_path / "run", "env.name=sokoban", "env.max_turns=2", "env.history=1",
                    "env.kwargs={dim_room: [5, 5], cell_size: 16}", "grpo.advantage=gigpo")
    assert summary["steps"] == 2 and summary["invalid_action_rate"] == 1.0 and summary["episodes_failed"] == 0
    rows = _metrics(tmp_path / "run")
    for row in rows:
        for key in ("success_rate", "episode_return_mean", "invalid_action_rate", "anchor_group_size_mean",
                    "anchor_group_size_max", "time/gen", "time/rollout", "time/adv", "time/update"):
            assert key in row, key
        assert row["episode_return_mean"] == pytest.approx(-0.2)  # two invalid actions, -0.1 each
        assert row["adv_abs_mean"] > 0  # GiGPO's step level: same anchor, different discounted returns
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "run" / "env_errors.jsonl").exists()


def test_user_and_failing_environments_in_grpo(tiny: Path, tmp_path: Path):
    """``file.py:Class`` environments train; one that raises ends only its episode, which is
    recorded with its error, and the run goes on."""
    ok = _grpo(tiny, tmp_path / "light", f"env.name={USER_ENVS}:TrafficLightEnv", "env.max_turns=2")
    assert ok["steps"] == 2 and ok["episodes_failed"] == 0
    # FlakyEnv raises in reset for seed 4 and in its second step for odd seeds: initial states 0..3
    # give seeds 3..6 with env.seed=3
    flaky = _grpo(tiny, tmp_path / "flaky", f"env.name={USER_ENVS}:FlakyEnv", "env.seed=3", "env.max_turns=3",
                  "data.shuffle=false", "grpo.advantage=gigpo")
    assert flaky["steps"] == 2
    errors = [json.loads(x) for x in (tmp_path / "flaky" / "env_errors.jsonl").read_text().splitlines()]
    assert {e["seed"] for e in errors} <= {3, 4, 5} and any(e["seed"] == 4 for e in errors)
    assert any("level file missing" in e["error"] for e in errors)
    assert sum(r["episodes_failed"] for r in _metrics(tmp_path / "flaky")) == len(errors)


def test_arlarena_loop_from_the_command_line(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    """rollout (solver) -> convert --min-score -> sft -> merge -> grpo with env, as documented."""
    env_kwargs = ["dim_room=[5,5]", "cell_size=16"]
    assert main(["rollout", "--env", "sokoban", "--policy", "solver", "--episodes", "4", "--max-turns", "3",
                 "--out", str(tmp_path / "expert"), "--no-progress", "--env-kwargs", *env_kwargs]) == 0
    assert main(["convert", "--from", "arlarena", str(tmp_path / "expert" / "trajectories.json"),
                 str(tmp_path / "sft.parquet"), "--min-score", "0.9"]) == 0
    assert main(["sft", f"model.path={tiny}", f"data.train_path={tmp_path / 'sft.parquet'}", "train.mode=lora",
                 "train.max_steps=2", "train.max_length=4096", f"output.dir={tmp_path / 'sft'}",
                 "--no-progress"]) == 0
    assert main(["merge", str(tmp_path / "sft" / "final"), str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    assert main(["grpo", f"model.path={tmp_path / 'merged'}", "env.name=sokoban", "env.max_turns=2",
                 "env.kwargs={dim_room: [5, 5], cell_size: 16}", "grpo.advantage=gigpo", "grpo.num_generations=2",
                 "grpo.prompts_per_step=1", "grpo.max_new_tokens=6", "train.max_steps=1",
                 f"output.dir={tmp_path / 'rl'}", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 1 and "success_rate" in summary
    assert (tmp_path / "rl" / "final" / "adapter_model.safetensors").is_file()
