"""What "no reference response reaches GRPO" means, checked row by row (shared by
test_splits.py and test_demo.py)."""

from __future__ import annotations

import json

from vlmtune.tasks.clarify.splits import REFERENCE_FIELDS


def assert_no_reference(prompt: dict, row: dict) -> None:
    """``prompt`` (a GRPO prompt row) holds no assistant turn and no text of ``row``'s (the
    labelled sample's) reference responses or multiple-choice answers."""
    assert [m["role"] for m in prompt["messages"]] == [m["role"] for m in row["messages"][:-1]] != []
    assert all(m["role"] != "assistant" for m in prompt["messages"])
    assert not set(REFERENCE_FIELDS) & set(prompt["meta"])
    text = json.dumps(prompt)
    leaks = [r for r in (*row["meta"]["references"].values(), *row["meta"]["choices"]) if r and r in text]
    assert not leaks, leaks
