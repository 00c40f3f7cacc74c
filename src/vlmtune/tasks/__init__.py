"""Tasks as plugins: one folder per task, holding everything the task owns.

``tasks/<name>/`` holds a task's data synthesis, prompt building, rewards and judge
templates, metrics, report sections, recipes and demo; the library layers (``data``,
``models``, ``train``, ``rollout``, ``rewards``, ``eval``) know no task. A task is registered by
one line in the ``TASKS`` table of :mod:`vlmtune.registry` (its protocol and optional hooks:
:mod:`vlmtune.eval.tasks`); a task of your own needs no line: ``--task path/to/file.py:Name``.

- ``clarify`` — when to answer, resolve, enumerate or ask (synthetic data, judge rewards,
  strategy metrics, ClarifyVLM metrics, the ``vlmtune demo``);
- ``gui_agent`` — CarePilot GUI-agent steps (``vlmtune agent``, step metrics);
- ``mcq`` — multiple-choice accuracy (Robo2VLM as RLinf scores it);
- ``arlarena`` — ARLArena agent trajectories (per-turn action accuracy);
- ``sokoban`` — visual Sokoban agents (scored as ``arlarena``; ``vlmtune demo --task sokoban``:
  expert data, SFT, GiGPO vs episode-level GRPO).
"""
