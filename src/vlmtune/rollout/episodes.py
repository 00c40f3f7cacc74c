"""Multi-turn episodes: a batch of environments played in lock-step by one policy.

A *policy* maps a batch of prompts to texts — ``policy(samples: list[Sample]) -> list[str]``
— so a model (any generation backend, :func:`generator_policy`), the environments' own
expert, a random player and the multi-turn RL engine's recording policy all plug in the same
way. :func:`play_episodes` resets every environment, then each turn builds one prompt per
unfinished episode, asks the policy once for the whole batch and steps each environment with
its text. Every turn is kept as a
:class:`Turn` (the prompt sample, the response, the reward, the *anchor* — a hash of the
observation the prompt showed, which GiGPO groups steps by — done, and the step info).

The prompt of a turn is one user message: the environment's text with the current image at
its ``<image>`` marker, and (``history`` = K > 0) the last K text observations and actions,
as verl-agent's memory gives them. An environment that raises (at reset, while building a
prompt, or in ``step``) ends its episode as failed with the error recorded; the others
play on. An exception from the policy is not an environment's fault and propagates.
"""

from __future__ import annotations

import hashlib
import io
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from vlmtune.data.converters.base import text_with_images
from vlmtune.data.sample import Sample
from vlmtune.envs.base import History, build_prompt
from vlmtune.rollout.generator import Generator, SamplingParams, first_texts

Policy = Callable[[list[Sample]], list[str]]
"""A batch of prompt samples -> one response text each, in order."""


def generator_policy(generator: Generator, params: SamplingParams) -> Policy:
    """A model as a policy: one completion of each prompt from a generation backend."""

    def act(samples: list[Sample]) -> list[str]:
        return first_texts(generator.generate(samples, params))

    return act


class RolloutError(ValueError):
    """A rollout that cannot run as asked (bad counts, a policy the environment cannot serve)."""


GENERIC_HELP = "Respond with your next action."
DEFAULT_MAX_TURNS = 100


@dataclass
class Turn:
    """One step of one episode.

    Attributes:
        step: 0-based turn index.
        prompt: The user turn as a canonical sample (``meta``: episode, seed, group, step);
            its one image is the observation shown, as PNG bytes (flat-colour frames compress
            to a few hundred bytes, so long runs stay small in memory).
        prompt_text: The same text with its ``<image>`` marker (ARLArena's ``inputs``).
        anchor: Hash of the observation shown (GiGPO's anchor state).
        response: The policy's text.
        reward: The environment's reward for it.
        done: The episode ended with this step (terminated, truncated or out of turns).
        info: The environment's step info.
    """

    step: int
    prompt: Sample
    prompt_text: str
    anchor: str
    response: str
    reward: float
    done: bool
    info: dict[str, Any]

    @property
    def png(self) -> bytes:
        """The observation shown, PNG-encoded."""
        return self.prompt.images[0]

    @property
    def image(self) -> np.ndarray:
        """The observation shown, ``(H, W, 3)`` uint8."""
        return np.asarray(Image.open(io.BytesIO(self.png)).convert("RGB"))


@dataclass
class Episode:
    """One episode: its seed, group (episodes sharing an initial state), turns and outcome."""

    index: int
    seed: int | None
    group: int
    turns: list[Turn] = field(default_factory=list)
    success: bool = False
    error: str | None = None

    @property
    def total_reward(self) -> float:
        return float(sum(t.reward for t in self.turns))

    @property
    def invalid_actions(self) -> int:
        return sum(1 for t in self.turns if not t.info.get("action_valid", True))


def anchor_hash(obs: np.ndarray) -> str:
    """A stable hash of an observation (shape, dtype and bytes): equal images, equal anchors."""
    arr = np.ascontiguousarray(obs)
    h = hashlib.sha1(f"{arr.shape}{arr.dtype}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:16]


def check_observation(obs: Any) -> np.ndarray:
    """The observation as an RGB uint8 array, or a TypeError saying what it is instead."""
    if not isinstance(obs, np.ndarray) or obs.dtype != np.uint8 or obs.ndim != 3 or obs.shape[2] != 3:
        what = f"{type(obs).__name__} {getattr(obs, 'dtype', '')} {getattr(obs, 'shape', '')}".strip()
        raise TypeError(f"observation must be an RGB image, numpy uint8 of shape (H, W, 3); got {what}")
    return obs


def unwrap(env: Any) -> Any:
    """The innermost environment under Gymnasium wrappers (itself for plain objects)."""
    return getattr(env, "unwrapped", env)


def env_prompt(env: Any, history: History, steps_taken: int) -> str:
    """The environment's own prompt if it has one, else a generic one with the image marker."""
    fn = getattr(unwrap(env), "prompt", None)
    if callable(fn):
        return fn(history, steps_taken)
    return build_prompt("", GENERIC_HELP, history, steps_taken)


def png_bytes(obs: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(obs).save(buf, format="PNG")
    return buf.getvalue()


def prompt_sample(text: str, obs: np.ndarray, meta: dict[str, Any]) -> Sample:
    """One user message: ``text`` with the observation (as PNG) at its ``<image>`` marker."""
    content = text_with_images(text)
    n = sum(1 for p in content if p["type"] == "image")
    if n != 1:
        raise ValueError(f"the prompt must hold exactly one <image> marker, found {n}")
    return Sample(messages=[{"role": "user", "content": content}], images=[png_bytes(obs)], meta=meta)


def _error(where: str, exc: BaseException) -> str:
    return f"{where}: {type(exc).__name__}: {exc}"


def _text_obs(env: Any, info: dict[str, Any]) -> str:
    if "text_obs" in info:
        return str(info["text_obs"])
    fn = getattr(unwrap(env), "text_observation", None)
    return str(fn()) if callable(fn) else ""


def _won(info: dict[str, Any]) -> bool:
    return bool(info.get("won", info.get("is_success", False)))


@dataclass
class _Live:
    """The rollout's view of one running episode."""

    env: Any
    obs: np.ndarray
    text_obs: str
    limit: int
    memory: deque = field(default_factory=deque)
    steps: int = 0


def _turn_limit(env: Any, max_turns: int | None) -> int:
    if max_turns is not None:
        return max_turns
    return int(getattr(unwrap(env), "max_steps", None) or DEFAULT_MAX_TURNS)


def _start(episode: Episode, env: Any, history: int, max_turns: int | None) -> _Live | None:
    try:
        obs, info = env.reset(seed=episode.seed)
        return _Live(env, check_observation(obs), _text_obs(env, info), _turn_limit(env, max_turns),
                     deque(maxlen=history))
    except Exception as exc:  # noqa: BLE001 - any environment failure ends only this episode
        episode.error = _error("reset", exc)
        return None


def _prompt(episode: Episode, live: _Live) -> tuple[Sample, str]:
    text = env_prompt(live.env, list(live.memory), live.steps)
    meta = {"episode": episode.index, "seed": episode.seed, "group": episode.group, "step": live.steps}
    return prompt_sample(text, live.obs, meta), text


def _step(episode: Episode, live: _Live, sample: Sample, text: str, response: str) -> bool:
    """Step one environment with the response and record the turn; True when it is over."""
    obs, reward, terminated, truncated, info = live.env.step(response)
    info = dict(info)
    live.memory.append((live.text_obs, str(info.get("action", response[:200]))))
    live.steps += 1
    done = bool(terminated or truncated) or live.steps >= live.limit
    episode.turns.append(Turn(live.steps - 1, sample, text, anchor_hash(live.obs), response, float(reward), done,
                              info))
    episode.success = _won(info)
    if not done:
        live.obs, live.text_obs = check_observation(obs), _text_obs(live.env, info)
    return done


def play_episodes(envs: Sequence[Any], seeds: Sequence[int | None], policy: Policy, *,
                  groups: Sequence[int] | None = None, max_turns: int | None = None, history: int = 0,
                  first_index: int = 0, on_episode: Callable[[Episode], None] | None = None) -> list[Episode]:
    """Play one episode per environment, all turns batched through ``policy``.

    Args:
        envs: One environment per episode (Gymnasium API, text actions).
        seeds: Reset seed per episode.
        policy: Prompt samples -> response texts.
        groups: Group id per episode (default: the episode index).
        max_turns: Turn limit (default: each environment's ``max_steps``, else 100).
        history: K, the number of past (text observation, action) pairs in each prompt.
        first_index: Index of the first episode (``Episode.index``, ``meta["episode"]``).
        on_episode: Called with each episode as it ends (progress bars).
    """
    if len(envs) != len(seeds):
        raise ValueError(f"{len(envs)} environments but {len(seeds)} seeds")
    if history < 0 or (max_turns is not None and max_turns < 1):
        raise ValueError("history must be >= 0 and max_turns >= 1")
    groups = list(groups) if groups is not None else [first_index + i for i in range(len(envs))]
    episodes = [Episode(first_index + i, s, g) for i, (s, g) in enumerate(zip(seeds, groups))]
    live: dict[int, _Live] = {}
    for i, (ep, env) in enumerate(zip(episodes, envs)):
        state = _start(ep, env, history, max_turns)
        if state is None:
            _finish(ep, on_episode)
        else:
            live[i] = state
    while live:
        prompts: dict[int, tuple[Sample, str]] = {}
        for i in list(live):
            try:
                prompts[i] = _prompt(episodes[i], live[i])
            except Exception as exc:  # noqa: BLE001
                episodes[i].error = _error(f"prompt at step {live.pop(i).steps}", exc)
                _finish(episodes[i], on_episode)
        order = list(prompts)
        responses = policy([prompts[i][0] for i in order]) if order else []
        if len(responses) != len(order):
            raise ValueError(f"the policy returned {len(responses)} texts for {len(order)} prompts")
        for i, response in zip(order, responses):
            try:
                done = _step(episodes[i], live[i], *prompts[i], str(response))
            except Exception as exc:  # noqa: BLE001
                episodes[i].error, done = _error(f"step {live[i].steps}", exc), True
                episodes[i].success = False
            if done:
                del live[i]
                _finish(episodes[i], on_episode)
    return episodes


def _finish(episode: Episode, on_episode: Callable[[Episode], None] | None) -> None:
    if on_episode is not None:
        on_episode(episode)


# ---------------------------------------------------------------------------- environment policies


def _method(envs: Sequence[Any], name: str, what: str) -> None:
    if envs and not callable(getattr(unwrap(envs[0]), name, None)):
        raise RolloutError(f"{what} needs the environment method {name}(); "
                         f"{type(unwrap(envs[0])).__name__} has none")


def expert_policy(envs: Sequence[Any], first_index: int = 0) -> Policy:
    """Each prompt answered by its environment's ``expert_action()`` (``meta["episode"]``
    names the environment: ``envs[episode - first_index]``)."""
    _method(envs, "expert_action", "the solver policy")

    def act(samples: list[Sample]) -> list[str]:
        return [unwrap(envs[s.meta["episode"] - first_index]).expert_action() for s in samples]

    return act


def random_policy(envs: Sequence[Any], seed: int = 0, first_index: int = 0) -> Policy:
    """Each prompt answered by its environment's ``random_action(rng)``, one generator per
    episode seeded by ``(seed, episode)``: episodes of one group play differently."""
    _method(envs, "random_action", "the random policy")
    rngs: dict[int, np.random.Generator] = {}

    def act(samples: list[Sample]) -> list[str]:
        out = []
        for s in samples:
            ep = s.meta["episode"]
            rng = rngs.setdefault(ep, np.random.default_rng([seed, ep]))
            out.append(unwrap(envs[ep - first_index]).random_action(rng))
        return out

    return act
