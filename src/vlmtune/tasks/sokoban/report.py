"""The Sokoban demo's HTML report: success per stage and a few rendered episodes.

One self-contained page (``OUT/index.html``): the stages' success rate, invalid-action
rate and mean turns on the held-out rooms (table and bar chart, the chart drawn by
:func:`vlmtune.eval.report.bar_chart`), then the first few held-out episodes as every stage
played them — each turn's observation with the action taken under it — so a reader sees
what changed (a wall bumped into, a loop, a push that wins). Frames come from each stage's
``trajectories.json`` and actions from its ``episodes.jsonl`` (``vlmtune rollout``'s
outputs); nothing is fetched from the network and all text is autoescaped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmtune.eval.report import TEMPLATE_DIR, bar_chart

FRAME_PX = 56
EPISODES_SHOWN = 4


def _frames(traj: dict, steps: list[dict]) -> list[dict[str, Any]]:
    """Each turn's observation (an inline PNG) with the action taken in it."""
    out = []
    for turn, step in zip(traj["turns"], steps):
        image = turn.get("image") or {}
        out.append({"src": f"data:image/png;base64,{image.get('data', '')}", "action": str(step.get("action")),
                    "valid": bool(step.get("action_valid", True))})
    return out


def stage_episodes(eval_dir: Path, limit: int) -> dict[int, dict[str, Any]]:
    """The first ``limit`` episodes of one stage's eval: frames, actions and outcome by index."""
    trajs = {t["sample_idx"]: t for t in json.loads((eval_dir / "trajectories.json").read_text())}
    out = {}
    for line in (eval_dir / "episodes.jsonl").read_text().splitlines()[:limit]:
        ep = json.loads(line)
        traj = trajs.get(ep["episode"], {"turns": []})
        out[ep["episode"]] = {"frames": _frames(traj, ep["steps"]), "success": ep["success"], "turns": ep["turns"],
                              "seed": ep["seed"], "error": ep["error"]}
    return out


def write_sokoban_report(out_dir: Path, eval_root: Path, summary: dict[str, Any], stages: Sequence[str],
                         titles: dict[str, str], episodes: int = EPISODES_SHOWN) -> Path:
    """Write ``out_dir/index.html`` from the stages' eval folders (``eval_root/<stage>``)
    and the demo summary; returns the page's path."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    names = [titles[s] for s in stages]
    keys = ("success_rate", "invalid_action_rate")
    chart = bar_chart(["success", "invalid actions"], {titles[s]: [summary[s][k] for k in keys] for s in stages},
                      y_label="share of held-out episodes")
    played = {s: stage_episodes(eval_root / s, episodes) for s in stages}
    shown = sorted(set().union(*(p.keys() for p in played.values())))
    env = Environment(loader=FileSystemLoader([Path(__file__).parent / "templates", TEMPLATE_DIR]),
                      autoescape=select_autoescape(["html", "jinja"]))
    page = env.get_template("report.html.jinja").render(
        title="vlmtune demo: multi-turn Sokoban (tiny Qwen2-VL)", stages=list(stages), names=names,
        summary=summary, chart=chart, shown=shown, played=played, titles=titles, frame_px=FRAME_PX,
        settings=summary.get("settings", {}), held_out=summary.get("held_out", {}))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
