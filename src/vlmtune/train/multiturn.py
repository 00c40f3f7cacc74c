"""Multi-turn RL for the GRPO engine: episodes in an environment instead of single completions.

With a recipe ``env:`` section, each GRPO step's generation phase plays episodes
(:func:`vlmtune.rollout.episodes.play_episodes`) and turns them into the engine's usual
batch of groups, so the update, the losses and the shared-prefix log-probs run unchanged:

- ``grpo.prompts_per_step`` initial states per step, each played ``grpo.num_generations``
  (G) times by the policy itself, sampling — GiGPO's episode groups;
- every turn's completion is one training segment, with the exact token ids that were
  sampled (:class:`RecordingPolicy`); turns whose prompts are identical (the first turn of
  a group's G episodes, or later turns that reached the same state with the same history)
  form one group of the batch, so their prompt and image run once (shared prefix);
- each segment's advantage comes from ``grpo.advantage``: ``grpo`` gives every turn its
  episode's group-relative advantage over task scores
  (:func:`~vlmtune.train.advantages.episode_advantages`); ``gigpo`` adds ``omega`` x a
  step-level advantage over anchor-state groups
  (:func:`~vlmtune.train.advantages.gigpo_advantages`); a ``module:attr`` estimator is
  called like ``gigpo_advantages``.

An episode whose environment raised is not the policy's fault: it is counted and its error
written to ``env_errors.jsonl`` in the run directory, its score is NaN (left out of its
group's statistics) and its turns are not trained on. A malformed action is the policy's
fault and stays in: the environment penalises it and the episode goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlmtune.config import ConfigError, EnvConfig, GrpoConfig
from vlmtune.data.sample import Sample
from vlmtune.envs.registry import EnvLoadError, make_env
from vlmtune.registry import ADVANTAGES
from vlmtune.rollout.episodes import Episode, Turn, play_episodes
from vlmtune.rollout.generator import Completion, Generator, SamplingParams
from vlmtune.rollout.hf import Rollout
from vlmtune.tracking import PhaseTimer
from vlmtune.train.advantages import anchor_groups, episode_advantages
from vlmtune.train.run import ENV_ERRORS_FILE

# Prompts per generate call while playing, when generation.batch_size is unset: a turn of every live episode.
GENERATION_BATCH = 64


@dataclass
class EpisodeBatch:
    """A step's episodes as training groups (the fields of the engine's ``Batch``).

    ``rollouts`` hold the trained turns, grouped by identical prompt; ``rewards`` and
    ``advantages`` are flat over their completions in rollout order (the environment's
    reward of each turn, its advantage); ``zero_spread`` counts episode groups whose scores
    were all equal; ``metrics`` are the episode statistics to log.
    """

    rollouts: list[Rollout]
    rewards: torch.Tensor  # (N,)
    advantages: torch.Tensor  # (N,)
    zero_spread: int
    metrics: dict[str, float]
    episodes: list[Episode] = field(default_factory=list)


class RecordingPolicy:
    """The policy itself as an episode player's policy: one sampled completion of each prompt
    from the generation backend, its token ids kept (keyed by episode and step), so the update
    trains on exactly the tokens that were sampled, never on a re-tokenisation of their text."""

    def __init__(self, generator: Generator, params: SamplingParams, timer: PhaseTimer | None = None):
        self.generator, self.params, self.timer = generator, params, timer or PhaseTimer()
        self.records: dict[tuple[int, int], Completion] = {}

    def __call__(self, samples: list[Sample]) -> list[str]:
        with self.timer("gen"):
            completions = [group[0] for group in self.generator.generate(samples, self.params)]
        for s, c in zip(samples, completions):
            self.records[(s.meta["episode"], s.meta["step"])] = c
        return [c.text for c in completions]


def episode_score(ep: Episode) -> float:
    """The task score (1 won, 0 not); NaN when the environment failed (not the policy's doing)."""
    return float("nan") if ep.error is not None else float(ep.success)


def turn_advantages(cfg: GrpoConfig, scores: torch.Tensor, episode_of_step: torch.Tensor,
                    step_rewards: torch.Tensor, anchors: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantage of every trained turn and its anchor-state group, as ``grpo.advantage`` says.

    Args:
        scores: (E,) episode scores, groups of G contiguous.
        episode_of_step: (S,) episode of each turn, in time order within an episode.
        step_rewards: (S,) the environment's reward of each turn.
        anchors: S observation hashes.
    """
    g = cfg.num_generations
    if cfg.advantage == "grpo":
        return (episode_advantages(scores, g, episode_of_step, cfg.scale, cfg.adv_eps),
                anchor_groups(anchors, episode_of_step // g))
    fn = ADVANTAGES.get(cfg.advantage)
    return fn(scores, g, episode_of_step, step_rewards, anchors, gamma=cfg.gamma, omega=cfg.omega,
              norm=cfg.gigpo_norm, eps=cfg.adv_eps)


def segment_groups(turns: Sequence[Turn]) -> list[list[int]]:
    """Indices of turns with identical prompts (text and observation), in first-seen order:
    each list becomes one group of the batch, its prompt run once."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, t in enumerate(turns):
        groups.setdefault((t.prompt_text, t.anchor), []).append(i)
    return list(groups.values())


def episode_metrics(episodes: Sequence[Episode], step_group: torch.Tensor) -> dict[str, float]:
    """What a multi-turn step logs about its episodes (all of them, failed ones included)."""
    n = max(len(episodes), 1)
    turns = sum(len(e.turns) for e in episodes)
    sizes = torch.bincount(step_group).float() if step_group.numel() else torch.zeros(1)
    sizes = sizes[sizes > 0]
    return {
        "success_rate": sum(e.success for e in episodes) / n,
        "episode_return_mean": sum(e.total_reward for e in episodes) / n,
        "episode_turns_mean": turns / n,
        "invalid_action_rate": sum(e.invalid_actions for e in episodes) / turns if turns else 0.0,
        "episodes_failed": sum(e.error is not None for e in episodes),
        "anchor_group_size_mean": float(sizes.mean()),
        "anchor_group_size_max": float(sizes.max()),
        "anchor_groups_singleton_frac": float((sizes == 1).float().mean()),
    }


class EpisodeCollector:
    """Plays a step's episodes with the policy and returns them as training groups.

    Args:
        env: The recipe's ``env`` section.
        cfg: The recipe's ``grpo`` section (G, sampling, advantage settings).
        generator: The generation backend over the policy being trained.
        params: How a turn is sampled (one completion each).
        prompt_inputs: A turn's prompt as the log-prob passes see it (``render_prompt``).
        pad_id: What completions are padded with in a group.
        run_dir: Where failed episodes' errors are appended (``env_errors.jsonl``).
    """

    def __init__(self, env: EnvConfig, cfg: GrpoConfig, generator: Generator, params: SamplingParams,
                 prompt_inputs: Callable[[Sample], dict[str, torch.Tensor]], pad_id: int, run_dir: Path):
        self.env_cfg, self.cfg, self.run_dir = env, cfg, Path(run_dir)
        self.prompt_inputs, self.pad_id = prompt_inputs, pad_id
        count = cfg.prompts_per_step * cfg.num_generations
        try:
            self.envs = [make_env(env.name, env.kwargs) for _ in range(count)]
        except EnvLoadError as exc:
            raise ConfigError(f"env.name: {exc}") from None
        self.policy = RecordingPolicy(generator, params)

    def seeds(self, states: Sequence[int]) -> tuple[list[int], list[int]]:
        """Reset seed and group of each episode: initial state ``i`` is seed ``env.seed + i``."""
        g = self.cfg.num_generations
        return ([self.env_cfg.seed + s for s in states for _ in range(g)],
                [k for k in range(len(states)) for _ in range(g)])

    def collect(self, states: Sequence[int], timer: PhaseTimer) -> EpisodeBatch:
        """Play one group of G episodes per initial state in ``states`` (indices from the
        engine's batch stream) and build the step's training groups."""
        seeds, groups = self.seeds(states)
        self.policy.records, self.policy.timer = {}, timer
        with timer("rollout"):
            episodes = play_episodes(self.envs[:len(seeds)], seeds, self.policy, groups=groups,
                                     max_turns=self.env_cfg.max_turns, history=self.env_cfg.history)
        with timer("adv"):
            return self.build(episodes)

    def build(self, episodes: list[Episode]) -> EpisodeBatch:
        """Advantages of the trained turns, and the turns grouped by identical prompt."""
        self.log_errors(episodes)
        g = self.cfg.num_generations
        scores = torch.tensor([episode_score(e) for e in episodes])
        trained = [(e.index, t) for e in episodes if e.error is None for t in e.turns]
        turns = [t for _, t in trained]
        episode_of_step = torch.tensor([i for i, _ in trained], dtype=torch.long)
        step_rewards = torch.tensor([t.reward for t in turns], dtype=torch.float32)
        adv, step_group = (turn_advantages(self.cfg, scores, episode_of_step, step_rewards, [t.anchor for t in turns])
                           if turns else (torch.zeros(0), torch.zeros(0, dtype=torch.long)))
        rollouts, order = [], []
        for idx in segment_groups(turns):
            group = [turns[i] for i in idx]
            completions = [self.policy.records[(e, t.step)] for e, t in (trained[i] for i in idx)]
            rollouts.append(Rollout.of(group[0].prompt, self.prompt_inputs(group[0].prompt), completions, self.pad_id))
            order += idx
        order_t = torch.tensor(order, dtype=torch.long)
        zero_spread = sum(1 for k in range(0, len(scores), g) if _flat(scores[k:k + g]))
        return EpisodeBatch(rollouts, step_rewards[order_t], adv[order_t].to(torch.float32), zero_spread,
                            episode_metrics(episodes, step_group), episodes)

    def log_errors(self, episodes: Sequence[Episode]) -> None:
        failed = [e for e in episodes if e.error is not None]
        if not failed:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / ENV_ERRORS_FILE).open("a", encoding="utf-8") as f:
            for e in failed:
                f.write(json.dumps({"seed": e.seed, "group": e.group, "turns": len(e.turns), "error": e.error}) + "\n")


def _flat(scores: torch.Tensor) -> bool:
    valid = scores[~scores.isnan()]
    return len(valid) < 2 or bool((valid == valid[0]).all())


def initial_states(env: EnvConfig, groups_needed: int) -> int:
    """How many distinct initial states the batch stream draws from: ``env.num_states``, or
    one fresh state per group of the whole run."""
    return env.num_states or max(1, groups_needed)


def check_env_recipe(env: EnvConfig, cfg: GrpoConfig, max_steps: int, has_rewards: bool) -> None:
    """What a multi-turn recipe needs beyond the schema, checked before any work."""
    if not env.name:
        if cfg.advantage != "grpo":
            raise ConfigError(f"grpo.advantage={cfg.advantage} is a multi-turn estimator: set env.name "
                              "(e.g. env.name=sokoban)")
        return
    if max_steps <= 0:
        raise ConfigError("a multi-turn recipe (env.name set) needs train.max_steps > 0: there are no "
                          "epochs of an environment")
    if has_rewards:
        raise ConfigError("with env.name set the rewards come from the environment; remove 'rewards'")
    if cfg.drop_zero_spread:
        raise ConfigError("grpo.drop_zero_spread does not apply to episodes (a GiGPO step group can carry "
                          "signal when its episode group has none); set it to false")
