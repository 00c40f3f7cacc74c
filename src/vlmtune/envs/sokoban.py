"""Visual Sokoban, as ARLArena and GiGPO (verl-agent) train VLM agents on it.

Each reset draws a new room from the seed (:func:`~vlmtune.envs.sokoban_levels.generate`:
solvable by construction, optimal solution of 1..``max_steps`` moves). The observation is
an image of large flat-colour cells (``cell_size`` px, default 24: a 6x6 room is 144x144),
easy for a small vision tower to read. Actions are ``up``, ``down``, ``left``, ``right``,
written as ``<action>up</action>``, optionally after ``<think>…</think>``.

Rewards are gym-sokoban's (which ARLArena's environment wraps): -0.1 per step, +1 for a
box pushed onto a target, -1 for a box pushed off one, +10 when all boxes are on targets.
An unreadable action, or one naming no single admissible move, costs ``invalid_penalty``
(default 0.1, GiGPO's invalid-action penalty), changes nothing and is counted.
The episode terminates when solved and is truncated after ``max_steps`` steps.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from vlmtune.envs import sokoban_levels as sk
from vlmtune.envs.base import IMAGE_MARKER, History, TextActionEnv, build_prompt, observation_space
from vlmtune.rewards.rules import strip_think

ACTIONS = tuple(sk.MOVES)
STEP_PENALTY, BOX_ON_TARGET, BOX_OFF_TARGET, SOLVED = -0.1, 1.0, -1.0, 10.0

PALETTE = np.array([
    (64, 64, 64),     # wall: dark grey
    (224, 224, 224),  # floor: light grey
    (230, 50, 50),    # target: red
    (40, 170, 70),    # box on target: green
    (245, 190, 30),   # box: yellow
    (40, 90, 230),    # player: blue
    (150, 60, 200),   # player on target: purple
], dtype=np.uint8)
"""RGB of each cell code (:data:`vlmtune.envs.sokoban_levels.SYMBOLS` order)."""

PROMPT_STYLES = ("full", "brief")
EXPERT_THINK = ("plan", "state", "none")
BRIEF_INTRO = "Sokoban: push the yellow box onto the red target; you are the blue square."
BRIEF_HELP = "Reply <action>MOVE</action>, MOVE one of up, down, left, right."

_ACTION_TAG = re.compile(r"<action>(.*?)</action>", re.S | re.I)


def parse_tagged_action(text: str, choices: tuple[str, ...]) -> str | None:
    """The one choice named inside the first ``<action>…</action>`` (after any
    ``<think>…</think>``), case-insensitive; None when the tag is missing or it names no
    choice or several different ones."""
    m = _ACTION_TAG.search(strip_think(text))
    if m is None:
        return None
    named = {w for w in re.findall(r"[a-z]+", m.group(1).lower()) if w in choices}
    return named.pop() if len(named) == 1 else None


def render_cells(grid: np.ndarray, cell_size: int) -> np.ndarray:
    """Cell codes ``(h, w)`` -> RGB ``(h*cell, w*cell, 3)`` uint8, a 1-px darker line at
    each cell's top and left edge so neighbouring cells of one colour stay countable."""
    img = np.repeat(np.repeat(PALETTE[grid], cell_size, axis=0), cell_size, axis=1)
    img[::cell_size, :] = (img[::cell_size, :] * 0.75).astype(np.uint8)
    img[:, ::cell_size] = (img[:, ::cell_size] * 0.75).astype(np.uint8)
    return img


class SokobanEnv(TextActionEnv):
    """Visual Sokoban with text actions (see the module docstring).

    Args:
        dim_room: ``(height, width)`` including the border walls.
        num_boxes: Boxes (and targets).
        max_steps: Steps before truncation; generated rooms are solvable within it.
        cell_size: Pixels per cell in the observation.
        invalid_penalty: Cost of an unreadable or inadmissible action.
        max_solver_nodes: Search limit of the solver (per call).
        expert_think: What the expert's ``<think>`` says before its action: ``plan`` (the
            remaining optimal moves), ``state`` (where the player, boxes and targets are, as
            ``row,col``: what it sees, not how it plans) or ``none`` (the action alone).
        prompt_style: ``full`` (the rules, what the picture shows, think then act: ARLArena's
            prompt in structure) or ``brief`` (two lines; for small models on a CPU, where the
            prompt's length is most of the compute).
    """

    INTRO = """You are playing Sokoban. Push every box onto a target square to win.

# Rules
Each turn you move one square: up, down, left or right. Walking into a box pushes it one square, if the square behind it is free floor. Boxes cannot be pulled, and cannot be pushed into walls or into other boxes. A box pushed into a corner that is not a target can never be moved again, so plan ahead.

# Picture
The board is a grid of flat coloured squares: dark grey = wall, light grey = floor, red = target, yellow = box, green = box on a target, blue = you, purple = you standing on a target. Up is towards the top of the image."""
    LEGEND = """# Text symbols
Wall #, floor _, target O, box X, box on target √, you P, you on target S."""
    ACTION_HELP = """Your admissible actions are ["up", "down", "left", "right"].
Think step by step inside <think> </think>, then give exactly one action inside <action> </action>, for example <think>...</think><action>left</action>."""

    def __init__(self, dim_room: tuple[int, int] | list[int] = (6, 6), num_boxes: int = 1, max_steps: int = 30,
                 cell_size: int = 24, invalid_penalty: float = 0.1, max_solver_nodes: int = 200_000,
                 expert_think: str = "plan", prompt_style: str = "full"):
        super().__init__(max_steps, invalid_penalty)
        h, w = (int(v) for v in dim_room)
        if h < 4 or w < 4:
            raise ValueError(f"dim_room must be at least (4, 4) (border walls included), got {tuple(dim_room)}")
        if num_boxes < 1 or num_boxes + 2 > (h - 2) * (w - 2):
            raise ValueError(f"num_boxes must be 1..{(h - 2) * (w - 2) - 2} for a {h}x{w} room, got {num_boxes}")
        if cell_size < 4:
            raise ValueError(f"cell_size must be >= 4 pixels, got {cell_size}")
        self.dim_room, self.num_boxes, self.cell_size = (h, w), int(num_boxes), int(cell_size)
        if expert_think not in EXPERT_THINK:
            raise ValueError(f"expert_think must be one of {EXPERT_THINK}, got {expert_think!r}")
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
        self.max_solver_nodes, self.expert_think = int(max_solver_nodes), expert_think
        self.prompt_style = prompt_style
        self.observation_space = observation_space(h * cell_size, w * cell_size)
        self.level: sk.Level | None = None
        self.state: sk.State | None = None
        self._plans: dict[sk.State, list[str] | None] = {}

    def _new_episode(self) -> dict[str, Any]:
        h, w = self.dim_room
        self.level, self.state, plan = sk.generate(self.np_random, h, w, self.num_boxes, self.max_steps,
                                                   max_nodes=self.max_solver_nodes)
        self._plans = {self.state: plan}
        return {"optimal_steps": len(plan)}

    def parse_action(self, text: str) -> str | None:
        return parse_tagged_action(text, ACTIONS)

    def prompt(self, history: History, steps_taken: int) -> str:
        if self.prompt_style == "brief":
            if not history:
                return f"{BRIEF_INTRO}\n{IMAGE_MARKER}\n{BRIEF_HELP}"
            return build_prompt(BRIEF_INTRO, BRIEF_HELP, history, steps_taken, self.LEGEND)
        return super().prompt(history, steps_taken)

    def _apply(self, action: str) -> float:
        before = len(self.state.boxes & self.level.targets)
        self.state = sk.move(self.level, self.state, action)
        delta = len(self.state.boxes & self.level.targets) - before  # one push moves one box: -1, 0 or 1
        reward = STEP_PENALTY + (BOX_ON_TARGET * delta if delta > 0 else BOX_OFF_TARGET * -delta)
        return reward + (SOLVED if self._won() else 0.0)

    def _won(self) -> bool:
        return sk.solved(self.level, self.state)

    def text_observation(self) -> str:
        return sk.to_text(self.level, self.state)

    def render(self) -> np.ndarray:
        return render_cells(sk.to_grid(self.level, self.state), self.cell_size)

    def plan(self) -> list[str] | None:
        """An optimal action sequence from the current state (None: unsolvable from here)."""
        if self.state not in self._plans:
            self._plans[self.state] = sk.solve(self.level, self.state, self.max_solver_nodes)
        return self._plans[self.state]

    def expert_action(self) -> str:
        """The solver's next move, after the reasoning ``expert_think`` asks for."""
        plan = self.plan()
        action = plan[0] if plan else "up"  # unsolvable (a box is stuck) or solved: any move will do
        if self.expert_think == "none":
            return f"<action>{action}</action>"
        if self.expert_think == "state":
            think = self.describe_state()
        elif plan:
            think = f"A shortest solution from here takes {len(plan)} move(s): {', '.join(plan)}."
        else:
            think = "No move can solve the room from here."
        return f"<think>{think}</think><action>{action}</action>"

    def describe_state(self) -> str:
        """Where the player, the boxes and the targets are (``row,col``, 0-based, walls included)."""
        def cells(ps: frozenset) -> str:
            return " ".join(f"{r},{c}" for r, c in sorted(ps))

        (r, c), boxes = self.state.player, self.state.boxes
        return f"you {r},{c} box {cells(boxes)} target {cells(self.level.targets)}"

    def random_action(self, rng: np.random.Generator) -> str:
        return f"<action>{ACTIONS[int(rng.integers(len(ACTIONS)))]}</action>"
