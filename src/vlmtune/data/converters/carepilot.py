"""CarePilot GUI-agent steps (one CSV row = one step of a task on one screenshot).

Input: a CSV (or a folder of CSVs) with ``Task_id``, ``Slide_number``, ``Image_id``,
``Instruction``, ``Grounding``, ``Short_Term_Memory``, ``Long_term_Memory`` and ``Output``
(the step's gold JSON, CSV-quoted; a ```json fence is tolerated). Images are resolved from
``Image_id`` relative to ``image_dir`` or the CSV's folder (bare ids try .png/.jpg/...).

Sample: user = [image, :func:`build_prompt` text]; assistant = the Output JSON text; meta:
``task_id``, ``step``, ``image_id``, ``instruction``, ``gold_action`` (upper case),
``gold_target``, ``output`` (the parsed object). ``drop`` leaves out the ``grounding``,
``short_term`` and/or ``long_term`` sections (ablations); :func:`build_prompt` is public so
inference (``vlmtune agent``) builds exactly the prompt the model was trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from vlmtune.data.converters.base import Context, convert_records, find_image, json_cell, require, strip_fence
from vlmtune.data.sample import BadSample, Sample

COLUMNS = {
    "task_id": "Task_id", "step": "Slide_number", "image": "Image_id", "instruction": "Instruction",
    "grounding": "Grounding", "short_term": "Short_Term_Memory", "long_term": "Long_term_Memory",
    "output": "Output",
}
REQUIRED = ("task_id", "step", "image", "instruction", "output")
DROPPABLE = ("grounding", "short_term", "long_term")
ACTIONS = ("CLICK", "SCROLL", "ZOOM", "SEGMENT", "TEXT", "COMPLETE")

TASK_CONTEXT = (
    "You are a GUI agent operating medical imaging software from screenshots. At each step, "
    "look at the screenshot and choose the next action from: " + ", ".join(ACTIONS) + ". "
    "Reply with a JSON object giving the action, its target and your updated short-term and "
    "long-term memory."
)
"""The fixed Task Context section of every prompt."""

EMPTY = "None"


def build_prompt(
    instruction: str,
    grounding: str | None = None,
    short_term_memory: str | None = None,
    long_term_memory: str | None = None,
    drop: frozenset[str] | set[str] = frozenset(),
    task_context: str = TASK_CONTEXT,
) -> str:
    """The step prompt: Task Context, Grounding, Short Term Memory, Long Term Memory,
    Instruction sections (``## Title`` headers), minus the dropped ones; empty → ``None``.

    Args:
        instruction: The task goal.
        grounding: Grounding text for the screenshot.
        short_term_memory: Memory of the last steps (the previous output's, at inference).
        long_term_memory: Memory of the whole task so far.
        drop: Any of ``"grounding"``, ``"short_term"``, ``"long_term"``.
        task_context: The fixed preamble.
    """
    sections = [("Task Context", task_context)]
    for key, title, value in (
        ("grounding", "Grounding", grounding),
        ("short_term", "Short Term Memory", short_term_memory),
        ("long_term", "Long Term Memory", long_term_memory),
    ):
        if key not in drop:
            sections.append((title, value))
    sections.append(("Instruction", instruction))
    return "\n\n".join(f"## {title}\n{_cell_text(value)}" for title, value in sections)


def _cell_text(value: Any) -> str:
    text = "" if value is None else str(value).strip()
    return text or EMPTY


def field(obj: dict, *names: str) -> Any:
    """``obj[name]`` for the first of ``names`` present, ignoring case, ``_`` and spaces."""
    norm = {str(k).lower().replace("_", "").replace(" ", ""): v for k, v in obj.items()}
    for name in names:
        key = name.lower().replace("_", "").replace(" ", "")
        if key in norm:
            return norm[key]
    return None


def samples(ctx: Context) -> Iterator[Sample]:
    """Yield one sample per CSV row (see the module docstring)."""
    unknown = set(ctx.drop) - set(DROPPABLE)
    if unknown:
        raise ValueError(f"carepilot can drop {DROPPABLE}, not {sorted(unknown)}")
    return convert_records(ctx, REQUIRED, partial(_sample, drop=ctx.drop), suffixes=(".csv",))


def _sample(record: dict, actual: dict[str, str], base: Path, drop: frozenset[str]) -> Sample:
    output_text = strip_fence(require(record, actual, "output"))
    output = json_cell(output_text, actual["output"])
    if not isinstance(output, dict):
        kind = type(output).__name__
        raise BadSample("bad_schema", f"column {actual['output']!r} must hold a JSON object, got {kind}")
    image_id = str(require(record, actual, "image"))
    image = find_image(image_id, base)
    optional = {k: record.get(actual[k]) for k in DROPPABLE}
    instruction = str(require(record, actual, "instruction"))
    prompt = build_prompt(instruction, optional["grounding"], optional["short_term"], optional["long_term"], drop)
    action = field(output, "action", "action_type")
    target = field(output, "target", "target_element", "element")
    step = str(require(record, actual, "step")).strip()
    meta = {
        "task_id": str(require(record, actual, "task_id")).strip(),
        "step": int(step) if step.lstrip("-").isdigit() else step,
        "image_id": image_id,
        "instruction": instruction,
        "gold_action": str(action).strip().upper() if action is not None else None,
        "gold_target": None if target is None else str(target),
        "output": output,
    }
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": [{"type": "text", "text": output_text}]},
    ]
    return Sample(messages=messages, images=[image], meta=meta)
