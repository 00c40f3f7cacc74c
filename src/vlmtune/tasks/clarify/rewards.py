"""Ambiguity-aware rewards: answer when the question is clear, otherwise enumerate or ask.

Strategy levels:

- L0 direct answer;
- L1 resolve the referent from context, then answer;
- L2 enumerate the 2–3 candidate interpretations (and answer each);
- L3 ask a clarifying question.

Two rewards, both following TRL's keyword convention (``fn(completions=..., prompts=...,
level=..., facts=..., **kwargs)``), both scoring through a *judge*:

- :func:`aqua` — the judge classifies the strategy (L0–L3) and checks the response for factual
  distortion against the sample's reference ``facts`` (PASS/FAIL). Reward 1 for the gold
  ``level`` without distortion, 1 − λ with distortion, 0 for a wrong strategy.
- :func:`clarify_rubric` — the judge gives a 1–4 strategic score for the sample's ``type``
  (``ambig``/``unambig``) plus the PASS/FAIL factual check. Reward 0 for score 1, else
  (1 − p) − {2: 0.4, 3: 0.2, 4: 0}[score] with p = 0.3 on FAIL, 0 on PASS.

Where the judge comes from (first match wins): the ``judge`` argument — a
:class:`~vlmtune.rewards.judge.JudgeClient`, a :class:`~vlmtune.tasks.clarify.judge.RuleJudge`,
the string ``"rule"`` or a ``JudgeConfig``; else the module default set by
:func:`~vlmtune.tasks.clarify.judge.configure_judge`. In a recipe,
:class:`~vlmtune.rewards.registry.RewardSet` passes the client built from the ``judge``
section, or a ``RuleJudge`` when the spec says ``kwargs: {judge: rule}``.

A sample whose judgement failed gets ``judge.failure_reward()`` (None under ``on_failure:
none``, ``default_score`` under ``default``); a sample without its gold column gets None.

The judge's prompts and the offline rule judge are in :mod:`vlmtune.tasks.clarify.judge`;
pass ``strategy_template=``/``distortion_template=``/``rubric_template=`` (kwargs in the
recipe) to use your own prompt file.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from vlmtune.rewards.parsers import parse_level, parse_pass_fail, parse_score_tag
from vlmtune.tasks.clarify.judge import TYPE_DESCRIPTIONS, ask_judge, normalize_level, resolve_judge

__all__ = ["RUBRIC_PENALTY", "aqua", "clarify_rubric"]

RUBRIC_PENALTY = {2: 0.4, 3: 0.2, 4: 0.0}


def _column(name: str, values: Any, n: int, fn: str) -> list:
    if values is None:
        raise ValueError(f"{fn}: needs the {name!r} column")
    if len(values) != n:
        raise ValueError(f"{fn}: column {name!r} has {len(values)} rows for {n} completions")
    return list(values)


def aqua(completions: Sequence, level: Sequence | None = None, facts: Sequence | None = None,
         prompts: Sequence | None = None, judge: Any = None, lam: float = 0.3,
         strategy_template: str = "aqua_strategy.txt",
         distortion_template: str = "aqua_distortion.txt", **kwargs: Any) -> list[float | None]:
    """Strategy-level reward: 1 right level & no distortion, 1 − ``lam`` right level with
    distortion, 0 wrong level; judge failure -> ``judge.failure_reward()``; no gold -> None.

    Given TRL's ``log_extra`` (the GRPO engine passes it), the reward's two components go to
    the step's sample columns, one value per completion, summing to the reward:
    ``aqua/strategy`` (1 right level, 0 wrong) and ``aqua/distortion`` (−``lam`` for a
    distorted answer at the right level, else 0); None where the reward is not theirs. The
    engine logs each one's spread inside groups (``spread/aqua/strategy``, ...): what the
    policy is pushed on."""
    n = len(completions)
    golds = [normalize_level(x) for x in _column("level", level, n, "aqua")]
    facts = _column("facts", facts, n, "aqua")
    j = resolve_judge(judge)
    rows = [i for i in range(n) if golds[i] is not None]
    strategy, passed = ask_judge(j, prompts, completions, rows,
                            [("strategy", strategy_template, parse_level),
                             ("distortion", distortion_template, parse_pass_fail)],
                            {"facts": facts, "level": golds})
    out: list[float | None] = [None] * n
    strategy_part: list[float | None] = [None] * n  # the two components, out = their sum
    distortion_part: list[float | None] = [None] * n
    for s, p, i in zip(strategy, passed, rows):
        if s is not None and int(s) != golds[i]:
            out[i], strategy_part[i], distortion_part[i] = 0.0, 0.0, 0.0
        elif s is None or p is None:
            out[i] = j.failure_reward()
        else:
            distorted = p < 0.5
            out[i] = 1.0 - lam if distorted else 1.0
            strategy_part[i], distortion_part[i] = 1.0, (-lam if distorted else 0.0)
    log_extra = kwargs.get("log_extra")
    if log_extra is not None:
        log_extra("aqua/strategy", strategy_part)
        log_extra("aqua/distortion", distortion_part)
    return out


def clarify_rubric(completions: Sequence, type: Sequence | None = None, facts: Sequence | None = None,
                   prompts: Sequence | None = None, judge: Any = None, fail_penalty: float = 0.3,
                   rubric_template: str = "clarify_rubric.txt",
                   distortion_template: str = "aqua_distortion.txt", **kwargs: Any
                   ) -> list[float | None]:
    """Rubric reward: 0 for score 1, else (1 − p) − {2: .4, 3: .2, 4: 0}[score], p =
    ``fail_penalty`` on a FAIL factual check; judge failure -> ``judge.failure_reward()``;
    a ``type`` other than ambig/unambig -> None."""
    n = len(completions)
    kinds = [str(t).strip().lower() if t is not None else None
             for t in _column("type", type, n, "clarify_rubric")]
    facts = _column("facts", facts, n, "clarify_rubric")
    j = resolve_judge(judge)
    rows = [i for i in range(n) if kinds[i] in TYPE_DESCRIPTIONS]
    descriptions = [TYPE_DESCRIPTIONS.get(k or "", "") for k in kinds]
    rubric, passed = ask_judge(j, prompts, completions, rows,
                          [("rubric", rubric_template, partial(parse_score_tag, lo=1, hi=4)),
                           ("distortion", distortion_template, parse_pass_fail)],
                          {"facts": facts, "type": kinds, "type_description": descriptions})
    out: list[float | None] = [None] * n
    for s, p, i in zip(rubric, passed, rows):
        score = None if s is None else int(round(s))
        if score == 1:
            out[i] = 0.0
        elif score is None or p is None:
            out[i] = j.failure_reward()
        else:
            out[i] = (1.0 - (fail_penalty if p < 0.5 else 0.0)) - RUBRIC_PENALTY[score]
    return out
