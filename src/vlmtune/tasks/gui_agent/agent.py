"""``vlmtune agent``: sequential GUI-agent inference with memory, as CarePilot runs it.

A task is a sequence of screenshots (CSV rows sharing a ``Task_id``, in ``Slide_number``
order). At each step the model sees the screenshot and the prompt the CarePilot converter
trains on (:func:`vlmtune.data.converters.carepilot.build_prompt`: Task Context, Grounding,
Short Term Memory, Long Term Memory, Instruction) and answers with a JSON object such as
``{"action": "CLICK", "target": "Segment Editor", "short_term_memory": "...",
"long_term_memory": "..."}``. The short- and long-term memory it writes are fed into the
*next* step's prompt: the model carries its own memory through the task, nothing from the
gold data leaks in after the first step (whose memory cells, usually empty, start the run).

The prompt's action list is ``actions`` (``--actions``) or, by default, the sorted set of
gold actions in the data, found by the converter's own
:func:`~vlmtune.data.converters.carepilot.gold_actions`; the gold step of each row is read by
the converter's :func:`~vlmtune.data.converters.carepilot.parse_output`, so ``vlmtune agent``
and ``vlmtune convert`` agree on every row. A row whose gold cannot be read still runs (the
memory chain needs it), scores as wrong and is listed in ``errors.jsonl``.

Model outputs are read with :func:`vlmtune.tasks.gui_agent.steps.parse_step` (JSON, repaired
JSON, then regexes). A step nothing can be read from is recorded (``status == "unparsed"``) and the
memory carries over unchanged; a memory field the output lacks also carries over. A step
whose screenshot is missing or unreadable, or whose Grounding (or, on step 1, memory) cell
starts like JSON but does not parse, is recorded with that reason, not run, and scored as
wrong. Nothing here stops a run because of what the model wrote.

Outputs in ``out_dir``:

- ``predictions.csv`` — one row per step, tasks in first-seen order, steps in
  ``Slide_number`` order: ``Task_id``, ``Slide_number``, ``Image_id``, ``status``,
  ``parse_method``, ``pred_action``, ``gold_action``, ``action_match``, ``pred_target``,
  ``gold_target``, ``target_match``, ``step_match``, ``input_short_term_memory``,
  ``input_long_term_memory`` (the memory fed in), ``output_short_term_memory``,
  ``output_long_term_memory`` (the memory handed to the next step), ``raw_output``,
  ``error``;
- ``metrics.json`` — :func:`vlmtune.tasks.gui_agent.steps.gui_metrics` (``action_accuracy``,
  ``target_accuracy``, ``step_accuracy``, ``task_accuracy``, ``num_steps``, ``num_tasks``,
  ``parse_failures``) plus ``status_counts``, ``steps_not_run``, ``bad_rows`` and ``run``;
- ``errors.jsonl`` — CSV rows that could not be placed in a task, or whose gold ``Output``
  could not be read (file, row, reason), if any.

Python::

    from vlmtune.tasks.gui_agent.agent import load_agent, run_agent
    agent = load_agent("runs/carepilot/final", actions=["CLICK", "SCROLL", "COMPLETE"])
    step = agent.predict_step("shot.png", "Segment the liver", None, None)
    step.action, step.target, step.short_term_memory, step.long_term_memory
    run_agent("runs/carepilot/final", "test.csv", "runs/agent", image_dir="shots")
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vlmtune.data.converters import carepilot
from vlmtune.data.report import BadRows, DataError
from vlmtune.data.sample import BadSample, ImageLike, Sample

__all__ = ["Agent", "StepPrediction", "add_agent_args", "cmd_agent", "load_agent", "run_agent"]

STM_KEYS = ("short_term_memory", "short_term", "stm")
LTM_KEYS = ("long_term_memory", "long_term", "ltm")

CSV_COLUMNS = (
    "Task_id", "Slide_number", "Image_id", "status", "parse_method",
    "pred_action", "gold_action", "action_match", "pred_target", "gold_target", "target_match", "step_match",
    "input_short_term_memory", "input_long_term_memory", "output_short_term_memory", "output_long_term_memory",
    "raw_output", "error",
)
"""Columns of ``predictions.csv``, in order."""

GenerateFn = Callable[[Sample], str]
"""One step sample (user turn: image + prompt) -> the model's raw output text."""


@dataclass(frozen=True)
class StepPrediction:
    """One predicted step.

    Attributes:
        raw: The model's output text.
        action: Upper-case action read from it, or ``None``.
        target: Target text, or ``None``.
        short_term_memory: Short-term memory for the next step (the output's, or the one
            fed in when the output has none).
        long_term_memory: Long-term memory for the next step (likewise).
        parse_method: ``"json"``, ``"repaired"``, ``"regex"`` or ``"failed"``.
        status: ``"ok"`` (action and both memories read), ``"no_memory"`` (action read,
            at least one memory carried over) or ``"unparsed"`` (no action read; both
            memories carried over).
        prompt: The prompt text the model saw.
        data: The parsed JSON object, if any.
    """

    raw: str
    action: str | None
    target: str | None
    short_term_memory: str | None
    long_term_memory: str | None
    parse_method: str
    status: str
    prompt: str = ""
    data: dict | None = None

    @property
    def parsed(self) -> bool:
        """Whether an action could be read."""
        return self.action is not None


def _memory_value(obj: dict | None, names: tuple[str, ...]) -> tuple[bool, str | None]:
    """``(found, text)`` of a memory field in a parsed output, wherever it nests (keys match
    ignoring case, ``_``, ``-`` and spaces); an explicit ``null`` is found and empty;
    lists/objects become JSON."""
    found, value = carepilot.find_field(obj, *names) if isinstance(obj, dict) else (False, None)
    if not found:
        return False, None
    if value is None:
        return True, ""
    return True, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def read_step(raw: str, short_term_memory: str | None, long_term_memory: str | None) -> StepPrediction:
    """Parse one output and work out the memory for the next step (pure; never raises)."""
    from vlmtune.tasks.gui_agent.steps import parse_step

    p = parse_step(raw)
    stm_found, stm = _memory_value(p.data, STM_KEYS)
    ltm_found, ltm = _memory_value(p.data, LTM_KEYS)
    if not p.ok:  # nothing usable: keep the memory as it was
        stm_found = ltm_found = False
    status = "unparsed" if not p.ok else ("ok" if stm_found and ltm_found else "no_memory")
    return StepPrediction(
        raw=raw, action=p.action, target=p.target,
        short_term_memory=stm if stm_found else short_term_memory,
        long_term_memory=ltm if ltm_found else long_term_memory,
        parse_method=p.method, status=status, data=p.data,
    )


def _check_drop(drop: Iterable[str]) -> frozenset[str]:
    drop = frozenset(drop)
    unknown = drop - set(carepilot.DROPPABLE)
    if unknown:
        raise ValueError(f"agent can drop {list(carepilot.DROPPABLE)}, not {sorted(unknown)}")
    return drop


class Agent:
    """Predicts one step at a time with the CarePilot training prompt.

    Args:
        generate: ``fn(sample) -> raw text`` for a one-turn sample (user: image + prompt).
            :func:`load_agent` builds it from a model; tests inject a scripted one.
        drop: Prompt sections left out, as at training (``grounding``, ``short_term``,
            ``long_term``); memory is still tracked when its section is dropped.
        actions: The actions the prompt offers, as at training; ``None`` lets
            :func:`run_agent` take them from its data (predicting before that is an error).
    """

    def __init__(self, generate: GenerateFn, drop: Iterable[str] = (), actions: Iterable[str] | None = None):
        self.generate, self.drop = generate, _check_drop(drop)
        self.actions: tuple[str, ...] | None = None if actions is None else carepilot.normalize_actions(actions)
        self.loaded: Any = None  # the Loaded model when built by load_agent

    def build_sample(self, image: ImageLike, goal: str, short_term_memory: str | None,
                     long_term_memory: str | None, grounding: str | None = None) -> Sample:
        """The one-turn sample for a step: exactly the converter's user turn.

        Raises:
            ValueError: The agent has no action list.
        """
        if not self.actions:
            raise ValueError("the agent has no action list: pass actions= (the list used at training)")
        prompt = carepilot.build_prompt(goal, grounding, short_term_memory, long_term_memory, self.drop,
                                        actions=self.actions)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return Sample(messages=messages, images=[image])

    def predict_step(self, image: ImageLike, goal: str, short_term_memory: str | None = None,
                     long_term_memory: str | None = None, grounding: str | None = None) -> StepPrediction:
        """Run the model on one screenshot.

        Args:
            image: The screenshot (path, bytes or PIL image).
            goal: The task instruction.
            short_term_memory: Memory fed in (the previous step's output's).
            long_term_memory: Memory fed in (likewise).
            grounding: The screenshot's grounding text, if the data has it.

        Returns:
            The raw output, parsed action/target, the memory for the next step and the
            parse status (an unparseable output is a status, not an exception).

        Raises:
            BadSample: The image is missing or unreadable.
        """
        sample = self.build_sample(image, goal, short_term_memory, long_term_memory, grounding)
        raw = self.generate(sample)
        raw = "" if raw is None else str(raw)
        step = read_step(raw, short_term_memory, long_term_memory)
        return replace(step, prompt=sample.messages[0]["content"][1]["text"])


def load_agent(model_path: str | Path, base_model: str | None = None, *, drop: Iterable[str] = (),
               actions: Iterable[str] | None = None, max_new_tokens: int = 256,
               system_prompt: str | None = None, backend: str = "hf",
               backend_options: dict[str, Any] | None = None) -> Agent:
    """Load a model (full or PEFT adapter) as a greedy step predictor.

    Args:
        model_path: Model directory or adapter directory.
        base_model: Base model directory for an adapter (default: the adapter's own).
        drop: Prompt sections dropped at training.
        actions: The prompt's action list used at training (``None``: set later, e.g. by
            :func:`run_agent` from its data).
        max_new_tokens: Output length limit per step.
        system_prompt: A system turn, if the model was trained with one.
        backend, backend_options: The generation backend (recipe ``generation.backend``,
            ``generation.options``).

    Raises:
        ModelLoadError: The path is missing or holds no model.
    """
    from vlmtune.models.loading import load_for_inference
    from vlmtune.rollout.generator import SamplingParams, build_generator, first_texts

    drop = _check_drop(drop)
    loaded = load_for_inference(model_path, base_model=base_model)
    gen = build_generator(backend, loaded.model, loaded.processor, system_prompt=system_prompt, batch_size=1,
                          options=backend_options)
    params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=False)

    def generate(sample: Sample) -> str:  # one step at a time: each step's memory is the last one's output
        return first_texts(gen.generate([sample], params))[0]

    agent = Agent(generate, drop=drop, actions=actions)
    agent.loaded = loaded
    return agent


# ---------------------------------------------------------------------------- reading tasks


@dataclass
class _Step:
    file: str
    row: int
    task_id: str
    step: Any
    image_id: str
    image: ImageLike | None
    image_error: str | None
    instruction: str
    grounding: str | None
    short_term: str | None
    long_term: str | None
    gold_action: str | None
    gold_target: str | None
    gold_error: BadSample | None = None
    cell_errors: dict[str, str] = field(default_factory=dict)

    def error(self, first: bool, drop: frozenset[str]) -> str | None:
        """Why this step cannot run: its screenshot, or a broken cell its prompt would show
        (memory cells only on a task's first step; later steps show the model's memory)."""
        shown = [k for k in ("grounding", *(("short_term", "long_term") if first else ())) if k not in drop]
        return self.image_error or next((self.cell_errors[k] for k in shown if k in self.cell_errors), None)


@dataclass
class TaskData:
    """CarePilot rows grouped into tasks.

    Attributes:
        tasks: Task id -> steps in ``Slide_number`` order (tasks in first-seen order).
        bad_rows: Rows not placed in a task, and rows whose gold ``Output`` cannot be read.
        gold_actions: Sorted set of the readable gold actions
            (:func:`vlmtune.data.converters.carepilot.gold_actions`).
    """

    tasks: dict[str, list[_Step]]
    bad_rows: BadRows
    gold_actions: tuple[str, ...]


def _step_key(step: Any) -> tuple:
    s = str(step).strip()
    try:
        return (0, float(s), "")
    except ValueError:
        return (1, 0.0, s)


def read_tasks(data: str | Path, image_dir: str | Path | None = None,
               columns: dict[str, str] | None = None) -> TaskData:
    """Read CarePilot CSV(s) into tasks.

    Rows without a task id or slide number, or with the wrong number of cells, go to
    ``bad_rows``; a missing screenshot or a broken JSON cell is kept on the step (it is
    reported, not run); an unreadable gold ``Output`` is kept as no gold and listed in
    ``bad_rows``.
    """
    from vlmtune.data.converters import CONVERTERS
    from vlmtune.data.converters.base import Context, check_columns, iter_records, record_columns, require

    conv = CONVERTERS["carepilot"]
    unknown = set(columns or {}) - set(conv.columns)
    if unknown:
        raise ValueError(f"carepilot has no column key(s) {sorted(unknown)}; keys: {sorted(conv.columns)}")
    ctx = Context(input=Path(data).absolute(), columns={**conv.columns, **(columns or {})},
                  image_dir=Path(image_dir).absolute() if image_dir is not None else None)
    required = ("task_id", "step", "image", "instruction")
    tasks: dict[str, list[_Step]] = {}
    for file in ctx.files((".csv",)):
        actual = check_columns(file, record_columns(file), ctx, required)
        base = ctx.image_base(file).absolute()
        for row, record in iter_records(file):
            try:
                if isinstance(record, BadSample):
                    raise record
                task_id = str(require(record, actual, "task_id")).strip()
                step = str(require(record, actual, "step")).strip()
            except BadSample as e:
                ctx.bad(file, row, e.reason, e.detail)
                continue
            s = _read_step(record, actual, base, str(file), row, task_id, step)
            if s.gold_error is not None and s.gold_error.reason != "missing_value":  # no gold: unlabeled
                ctx.bad(file, row, s.gold_error.reason, f"gold not read, step scored as wrong: {s.gold_error.detail}")
            tasks.setdefault(task_id, []).append(s)
    for steps in tasks.values():
        steps.sort(key=lambda s: _step_key(s.step))
    return TaskData(tasks, ctx.bad_rows, carepilot.gold_actions(ctx, required))


def _read_step(record: dict, actual: dict[str, str], base: Path, file: str, row: int,
               task_id: str, step: str) -> _Step:
    """One row as a step; problems are kept on the step, not raised."""
    from vlmtune.data.converters.base import find_image

    cell = lambda key: record.get(actual[key])  # noqa: E731
    image_id = str(cell("image") or "")
    image, image_error = None, None
    try:
        if not image_id.strip():
            raise BadSample("missing_image", "empty image id")
        image = find_image(image_id, base)
    except BadSample as e:
        image_error = f"{e.reason}: {e.detail}"
    gold_action = gold_target = gold_error = None
    try:
        _, _, gold_action, gold_target = carepilot.parse_output(cell("output"), actual["output"])
    except BadSample as e:
        gold_error = e
    cell_errors = {}
    for key in carepilot.DROPPABLE:
        try:
            carepilot.check_json_cells(record, actual, [key])
        except BadSample as e:
            cell_errors[key] = f"{e.reason}: {e.detail}"
    return _Step(
        file=file, row=row, task_id=task_id, step=int(step) if step.lstrip("-").isdigit() else step,
        image_id=image_id, image=image, image_error=image_error,
        instruction=str(cell("instruction") or ""), grounding=cell("grounding"),
        short_term=cell("short_term"), long_term=cell("long_term"),
        gold_action=gold_action, gold_target=gold_target, gold_error=gold_error, cell_errors=cell_errors,
    )


# ---------------------------------------------------------------------------- the run


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), disable=not enabled)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return value


def run_agent(model_path: str | Path | None, data_csv: str | Path, out_dir: str | Path,
              base_model: str | None = None, image_dir: str | Path | None = None,
              drop: Iterable[str] = (), *, actions: Iterable[str] | None = None, max_new_tokens: int = 256,
              system_prompt: str | None = None, columns: dict[str, str] | None = None,
              agent: Agent | None = None, show_progress: bool = False, backend: str = "hf",
              backend_options: dict[str, Any] | None = None) -> dict:
    """Run the agent over every task of a CarePilot CSV and score it.

    Each task's steps run in ``Slide_number`` order; step 1 gets the memory cells of its
    CSV row, every later step the memory the previous step's output produced (carried
    over unchanged when that output had none). Grounding comes from the CSV.

    Args:
        model_path: Model or adapter directory (ignored when ``agent`` is given).
        data_csv: CarePilot CSV, or a folder of them.
        out_dir: Where ``predictions.csv`` and ``metrics.json`` go.
        base_model: Base model for an adapter.
        image_dir: Folder screenshots are resolved against (default: the CSV's folder).
        drop: Prompt sections dropped at training (must match the converter's ``--drop``).
        actions: The prompt's action list (must match the converter's); default: the
            agent's own, else the gold actions in ``data_csv`` as the converter finds them.
        max_new_tokens: Output length limit per step.
        system_prompt: A system turn, if the model was trained with one.
        columns: Column renames, as for ``vlmtune convert --column``.
        agent: A ready :class:`Agent` (e.g. with a scripted generator) instead of loading;
            its own ``drop`` then applies.
        show_progress: Show a progress bar.
        backend, backend_options: The generation backend (recipe ``generation.*``).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        ModelLoadError: The model path is missing or holds no model.
        DataError: The CSV is missing or lacks a required column.
        DataError: No action list: none given and no readable gold action in the data.
    """
    from vlmtune.tasks.gui_agent.steps import gui_metrics

    start = time.perf_counter()
    drop = _check_drop(drop)
    if not Path(data_csv).exists():
        raise DataError(f"data file not found: {data_csv}")
    if agent is None:
        from vlmtune.models.loading import check_model_path

        if model_path is None:
            raise ValueError("run_agent needs model_path or agent")
        check_model_path(model_path)
        if base_model is not None:
            check_model_path(base_model)
    data = read_tasks(data_csv, image_dir, columns)
    tasks, bad_rows = data.tasks, data.bad_rows
    actions = _resolve_actions(actions, agent, data)
    if agent is None:
        agent = load_agent(model_path, base_model, drop=drop, actions=actions, max_new_tokens=max_new_tokens,
                           system_prompt=system_prompt, backend=backend, backend_options=backend_options)
    agent.actions = actions
    drop = agent.drop
    n_steps = sum(len(s) for s in tasks.values())

    rows: list[dict[str, Any]] = []
    with _progress(show_progress) as progress:
        bar = progress.add_task("agent", total=n_steps)
        for steps in tasks.values():
            stm, ltm = steps[0].short_term, steps[0].long_term
            for s in steps:
                row = _run_step(agent, s, stm, ltm, first=s is steps[0])
                stm, ltm = row["output_short_term_memory"], row["output_long_term_memory"]
                rows.append(row)
                progress.advance(bar)
    scored = [{"task_id": r["Task_id"], **{k: r[k] for k in ("pred_action", "pred_target", "gold_action",
                                                             "gold_target", "parse_method")}} for r in rows]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "predictions.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows({k: _cell(r.get(k)) for k in CSV_COLUMNS} for r in rows)
    metrics: dict[str, Any] = dict(gui_metrics(scored))
    status_counts: dict[str, int] = {}
    for r in rows:
        status_counts[r["status"]] = status_counts.get(r["status"], 0) + 1
    metrics["status_counts"] = status_counts
    metrics["steps_not_run"] = sum(r["parse_method"] == "not_run" for r in rows)
    metrics["memory_from_output"] = status_counts.get("ok", 0)
    metrics["gold_unparsed"] = sum(s.gold_action is None for steps in tasks.values() for s in steps)
    metrics["gold_actions_not_offered"] = sorted(set(data.gold_actions) - set(actions))
    metrics["bad_rows"] = bad_rows.total
    metrics["bad_rows_by_reason"] = bad_rows.counts()
    if bad_rows.total:
        bad_rows.write_jsonl(out / "errors.jsonl")
    else:
        (out / "errors.jsonl").unlink(missing_ok=True)
    metrics["run"] = {
        "model": None if model_path is None else str(model_path), "base_model": base_model,
        "data": str(data_csv), "image_dir": None if image_dir is None else str(image_dir),
        "drop": sorted(drop), "actions": list(actions), "max_new_tokens": max_new_tokens,
        "system_prompt": system_prompt,
        "wall_seconds": round(time.perf_counter() - start, 2),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, ensure_ascii=False, default=str))
    return metrics


def _run_step(agent: Agent, s: _Step, stm: str | None, ltm: str | None, first: bool) -> dict[str, Any]:
    """Predict and score one step; the row's ``output_*_memory`` is the next step's memory."""
    from vlmtune.tasks.gui_agent.steps import score_step

    row: dict[str, Any] = {"Task_id": s.task_id, "Slide_number": s.step, "Image_id": s.image_id,
                           "gold_action": s.gold_action, "gold_target": s.gold_target,
                           "input_short_term_memory": stm, "input_long_term_memory": ltm}
    pred, error = None, s.error(first=first, drop=agent.drop)
    if error is None:
        try:
            pred = agent.predict_step(s.image, s.instruction, stm, ltm, grounding=s.grounding)
        except BadSample as e:  # an unreadable screenshot
            error = f"{e.reason}: {e.detail}"
    if pred is None:
        row.update(status=error.split(":", 1)[0], parse_method="not_run", pred_action=None,
                   pred_target=None, raw_output="", error=error)
    else:
        stm, ltm = pred.short_term_memory, pred.long_term_memory
        row.update(status=pred.status, parse_method=pred.parse_method, pred_action=pred.action,
                   pred_target=pred.target, raw_output=pred.raw, error=None)
    score = score_step(row["raw_output"], s.gold_action, s.gold_target)
    row.update(action_match=score["action_match"], target_match=score["target_match"],
               step_match=score["step_match"], output_short_term_memory=stm, output_long_term_memory=ltm)
    return row


def _resolve_actions(actions: Iterable[str] | None, agent: Agent | None, data: TaskData) -> tuple[str, ...]:
    """The prompt's action list: given, else the agent's, else the data's gold actions."""
    if actions is not None:
        return carepilot.normalize_actions(actions)
    if agent is not None and agent.actions:
        return agent.actions
    if not data.gold_actions:
        raise DataError("no action list for the prompt: the data has no readable gold action; "
                        "pass --actions (the list used at training)")
    return data.gold_actions


# ---------------------------------------------------------------------------- CLI


def _list_flag(key: str) -> Callable[[list[str]], dict[str, Any]]:
    from vlmtune.data.converters import split_list

    return lambda values: {key: split_list(values)}


def _columns_flag(values: list[str]) -> dict[str, Any]:
    from vlmtune.data.converters import parse_columns

    return {"agent.columns": parse_columns(values)}


AGENT_FLAGS = {"model": "model.path", "base_model": "model.base_model", "data": "data.eval_path",
               "out": "agent.out", "image_dir": "agent.image_dir", "drop": _list_flag("agent.drop"),
               "column": _columns_flag, "actions": lambda v: _list_flag("agent.actions")([v]),
               "max_new_tokens": "agent.max_new_tokens", "system_prompt": "data.system_prompt"}
"""Each flag of ``vlmtune agent`` is a shorthand for a recipe key (``config.recipe_from_args``)."""


def add_agent_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``vlmtune agent``: a recipe and overrides, or the flags (shorthands)."""
    from vlmtune.config import add_recipe_args

    add_recipe_args(p)
    g = p.add_argument_group("shorthands (each flag sets the recipe key named)")
    g.add_argument("--model", help="model.path: model directory (full model or PEFT adapter)")
    g.add_argument("--data", help="data.eval_path: CarePilot CSV (or a folder of CSVs): Task_id, Slide_number, "
                   "Image_id, Instruction, Grounding, Short_Term_Memory, Long_term_Memory, Output")
    g.add_argument("--out", help="agent.out: output directory (predictions.csv, metrics.json; default "
                                 "output.dir/agent)")
    g.add_argument("--base-model", help="model.base_model: base model directory for an adapter "
                   "(default: the adapter's base_model_name_or_path)")
    g.add_argument("--image-dir", help="agent.image_dir: folder screenshots (Image_id) are resolved against "
                   "(default: the CSV's folder)")
    g.add_argument("--drop", action="append", metavar="SECTION",
                   help="agent.drop: prompt section(s) dropped at training, repeatable or comma-separated "
                        f"({', '.join(carepilot.DROPPABLE)}); must match `vlmtune convert --drop`")
    g.add_argument("--column", action="append", metavar="KEY=NAME",
                   help="agent.columns: rename a column, as for `vlmtune convert --column`")
    g.add_argument("--actions", metavar="A,B,...", help="agent.actions: the actions the prompt offers; must match "
                   "`vlmtune convert --actions` (default: the gold actions in --data, as convert finds them)")
    g.add_argument("--max-new-tokens", type=int, help="agent.max_new_tokens: per step (default 256)")
    g.add_argument("--system-prompt", help="data.system_prompt: system prompt, if the model was trained with one")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_recipe_agent(recipe: Any, show_progress: bool = False) -> tuple[dict, Path]:
    """:func:`run_agent` with a recipe's keys; returns the metrics and the output directory
    (where the resolved recipe is written as ``config.yaml``)."""
    from vlmtune.config import ConfigError, save_recipe

    cfg = recipe.agent
    if not recipe.model.path:
        raise ConfigError("vlmtune agent needs a model: --model DIR (model.path=DIR)")
    if not recipe.data.eval_path:
        raise ConfigError("vlmtune agent needs data: --data CSV (data.eval_path=CSV)")
    out = Path(cfg.out or Path(recipe.output.dir) / "agent")
    metrics = run_agent(recipe.model.path, recipe.data.eval_path, out, base_model=recipe.model.base_model,
                        image_dir=cfg.image_dir, drop=cfg.drop, actions=cfg.actions,
                        max_new_tokens=cfg.max_new_tokens, system_prompt=recipe.data.system_prompt,
                        columns=cfg.columns, show_progress=show_progress, backend=recipe.generation.backend,
                        backend_options=recipe.generation.options)
    save_recipe(recipe, out / "config.yaml")
    return metrics, out


def cmd_agent(args: argparse.Namespace) -> int:
    """Run ``vlmtune agent``; prints the metrics. Exit 0."""
    from vlmtune.config import recipe_from_args

    metrics, out = run_recipe_agent(recipe_from_args(args, AGENT_FLAGS), show_progress=not args.no_progress)
    print(json.dumps({k: v for k, v in metrics.items() if k != "run"}, indent=1, default=str))
    print(f"wrote {out / 'predictions.csv'}, metrics.json and config.yaml")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m vlmtune.tasks.gui_agent.agent ...`` (same arguments as ``vlmtune agent``)."""
    from vlmtune.config import ConfigError, parse_args
    from vlmtune.models.loading import ModelLoadError

    p = argparse.ArgumentParser(prog="vlmtune agent", description="sequential GUI-agent inference with memory")
    add_agent_args(p)
    args = parse_args(p, argv)
    try:
        return cmd_agent(args)
    except (ConfigError, DataError, ModelLoadError, ValueError, FileNotFoundError) as exc:
        print(f"vlmtune agent: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
