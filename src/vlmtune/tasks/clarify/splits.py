"""The demo's two training sets, cut from one synthesized training split (the papers' setting).

- :func:`labelled_subset` — SFT's *labelled* set, skewed the way annotation is: one strategy
  (the demo: L2, the enumerations) keeps only a share of its samples. Writing an enumeration
  means listing every candidate with its attribute, the costliest reference to annotate;
  ClarifyVLM's own data has no enumeration level at all (ambiguous questions are labelled
  "ask"), so a labelled set that under-represents it is the realistic case.
- :func:`unlabelled_prompts` — GRPO's *unlabelled* prompts: every training sample (balanced
  levels, more of them than SFT saw) with its reference response removed. What remains in
  ``meta`` is what the judge reads: the scene's facts and the level they imply (the level is
  a function of the scene and the question: how many shapes of the asked type there are and
  whether the question's phrase singles one out), never a response to imitate.

Both read and write JSONL rows as they are (images stay relative to the same folder), so the
output files live next to the input.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

__all__ = ["REFERENCE_FIELDS", "labelled_subset", "unlabelled_prompts"]

REFERENCE_FIELDS = ("references", "answer", "choices", "mc_gold")
"""``meta`` fields that hold or give away a reference response: the per-level references, the
gold colour, the multiple-choice answers (choice 1 is the direct answer) and the gold choice."""


def _rows(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: row {i}: not JSON ({exc.msg})") from None
    return rows


def _write(rows: list[dict], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows),
                   encoding="utf-8")
    tmp.replace(path)


def _level(row: dict, path: Path, i: int) -> str:
    level = (row.get("meta") or {}).get("level")
    if level is None:
        raise ValueError(f"{path}: row {i}: meta has no 'level'")
    return str(level)


def labelled_subset(train_path: str | Path, out_path: str | Path, level: str, share: float,
                    seed: int = 0) -> dict[str, int]:
    """Write the training rows with only ``share`` of the ``level`` rows kept (a seeded draw of
    ``round(share * count)`` of them; every other row kept, order unchanged).

    Returns:
        Rows written per level.

    Raises:
        ValueError: ``share`` outside [0, 1], a row without a level, or no row at ``level``.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be between 0 and 1, got {share!r}")
    train_path, out_path = Path(train_path), Path(out_path)
    rows = _rows(train_path)
    levels = [_level(r, train_path, i) for i, r in enumerate(rows, start=1)]
    at_level = [i for i, lv in enumerate(levels) if lv == level]
    if not at_level:
        raise ValueError(f"{train_path}: no row at level {level!r} (levels: {sorted(set(levels))})")
    kept = set(random.Random(f"labelled-{seed}").sample(at_level, round(share * len(at_level))))
    keep = [i for i, lv in enumerate(levels) if lv != level or i in kept]
    _write([rows[i] for i in keep], out_path)
    return dict(sorted(Counter(levels[i] for i in keep).items()))


def unlabelled_prompts(train_path: str | Path, out_path: str | Path) -> int:
    """Write every training row as a prompt: the trailing assistant turn and the ``meta`` fields
    of :data:`REFERENCE_FIELDS` removed. Returns the number of rows written."""
    train_path, out_path = Path(train_path), Path(out_path)
    rows = _rows(train_path)
    for r in rows:
        messages = r.get("messages") or []
        while messages and messages[-1].get("role") == "assistant":
            messages.pop()
        r["meta"] = {k: v for k, v in (r.get("meta") or {}).items() if k not in REFERENCE_FIELDS}
    _write(rows, out_path)
    return len(rows)
