"""The ``sokoban`` task: Sokoban agent turns scored like ARLArena's, and the demo hook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmtune.tasks.arlarena.task import ARLArenaTask

__all__ = ["SokobanTask"]


class SokobanTask(ARLArenaTask):
    """Sokoban episodes as ARLArena trajectories (what ``vlmtune rollout --env sokoban``
    writes and ``convert --from arlarena`` reads): ``vlmtune eval --task sokoban`` scores
    per-turn action accuracy and trajectory success exactly as ``arlarena`` does; the task
    adds the multi-turn learning-proof demo (``vlmtune demo --task sokoban``)."""

    name = "sokoban"

    def demo(self, out: Path, *, fast: bool = False, settings: Any = None) -> dict:
        """``vlmtune demo --task sokoban``: expert data -> SFT -> GiGPO vs GRPO (:mod:`.demo`)."""
        from vlmtune.tasks.sokoban.demo import run_sokoban_demo

        return run_sokoban_demo(Path(out), fast=fast, settings=settings)
