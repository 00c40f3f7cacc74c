"""Visual Sokoban as a multi-turn agent task: ``task`` (``--task sokoban``: per-turn scoring
and the demo hook), ``demo`` (the learning proof: expert data, SFT, GiGPO vs GRPO) and
``report`` (its HTML page).

The environment itself is :class:`vlmtune.envs.sokoban.SokobanEnv` (a library layer the
rollout and the RL engine use); this folder holds what the task adds on top of it.
"""

from vlmtune.tasks.sokoban.task import SokobanTask

__all__ = ["SokobanTask"]
