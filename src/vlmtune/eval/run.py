"""``vlmtune eval``: run a model (full or PEFT adapter) over an eval set and score it.

Needs a model directory and a data file, nothing else: ``vlmtune eval --model DIR --data
FILE``, or any recipe with dotted overrides (``vlmtune eval clarifyvlm_sft --model DIR --data
FILE``: each flag is a shorthand for a recipe key, ``EVAL_FLAGS``; the recipe's ``eval.task``,
``eval.max_new_tokens``, ``data.system_prompt``, ``generation.*`` apply). Steps: load the
model (:func:`~vlmtune.models.loading.load_for_inference`), read the samples (a trailing
assistant turn is the reference and is not shown to the model), generate greedily in batches
(the generation backend, :mod:`vlmtune.rollout.generator`), score with the task
(:mod:`vlmtune.eval.tasks`: a built-in name of the ``TASKS`` table, or a task of your own as
``path/to/file.py:Name`` / ``module:Name``) and write to ``out_dir``:

A task may stop the run before the model loads when the data holds nothing it can score
(its ``check``; a one-line error, exit code 2) and may turn the samples into the prompts to
generate for (its ``expand``: ``arlarena`` makes one per trajectory turn).

- ``predictions.jsonl`` — one record per prompt: ``id``, ``question``, ``image`` (path of
  the first image, or ``"<inline>"`` for embedded images), ``level``, ``gold``,
  ``response``, ``pred``, ``correct``, ``verdicts`` and the task's per-sample fields;
- ``predictions.csv`` — the same records flattened (``verdicts.*`` become columns);
- ``metrics.json`` — the task's aggregate metrics at top level plus ``run`` (model, data,
  task, counts, skipped rows, wall time);
- ``skipped_rows.jsonl`` — one ``{"file", "row", "reason", "detail"}`` line per row left out:
  unreadable or invalid rows, prompts over the token limit (``too_long``: the prompt plus
  ``max_new_tokens`` beyond ``--max-length``, by default the model's context), rows the
  processor or ``generate`` fails on. The rest are evaluated and written all the same;
- ``report/index.html`` — the self-contained HTML report (:mod:`vlmtune.eval.report`);
- ``config.yaml`` — the resolved recipe (from the CLI).

Also runnable as ``python -m vlmtune.eval.run --model DIR --data FILE ...``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmtune.config import ConfigError, parse_args
from vlmtune.rollout.generator import Generator, SamplingParams, build_generator, first_texts

__all__ = ["add_eval_args", "cmd_eval", "run_eval", "write_predictions"]

FIRST_COLUMNS = ("id", "question", "image", "level", "gold", "response", "pred", "correct", "verdicts")


def _image_ref(sample: Any) -> str | None:
    from vlmtune.data.sample import image_path

    if not sample.images:
        return None
    path = image_path(sample.images[0])
    return str(path) if path is not None else "<inline>"


def resolve_judge_arg(judge: Any) -> Any:
    """An ``http(s)://`` URL -> HTTP judge at that base URL; a ``.yaml`` path -> the recipe's
    ``judge`` section; an offline judge of the ``JUDGES`` table (``rule``) or ``module:Class``
    -> its name (the task builds it); None and judge objects are passed through."""
    if judge is None or not isinstance(judge, (str, Path)):
        return judge
    s = str(judge)
    from vlmtune.config import JudgeConfig, load_recipe
    from vlmtune.registry import JUDGES, RegistryError

    if s.startswith(("http://", "https://")):
        return JudgeConfig(base_url=s)
    if s.endswith((".yaml", ".yml")):
        return load_recipe(s).judge
    try:
        return JUDGES.check(s)
    except RegistryError as exc:
        raise ConfigError(f"--judge must be an offline judge, an http(s):// base URL or a recipe .yaml: {exc}") \
            from None


def _progress(enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled)


class PromptScreen:
    """Which prompts fit the token limit, decided before anything is batched or generated.

    A prompt's length is its processor encoding (text and image tokens). Tokenizing a 10 MB
    row takes minutes, so a prompt whose characters alone prove it too long is refused first:
    no vocabulary entry decodes to more characters than the longest one, so a text of C
    characters needs at least C / longest tokens."""

    def __init__(self, processor: Any, system_prompt: str | None, limit: int | None, max_new_tokens: int,
                 source: str):
        self.processor, self.system_prompt = processor, system_prompt
        self.limit, self.max_new_tokens, self.source = limit, max_new_tokens, source
        tokenizer = getattr(processor, "tokenizer", processor)
        self.longest_token = max((len(t) for t in tokenizer.get_vocab()), default=1) or 1

    def reason(self, sample: Any) -> tuple[str, str] | None:
        """None when the sample can be generated for, else ``(reason, detail)``."""
        from vlmtune.batching.render import prompt_text

        try:
            text = prompt_text(sample, self.processor, self.system_prompt)
            if self.limit is None:
                return None
            budget = self.limit - self.max_new_tokens
            if len(text) // self.longest_token > budget:
                return "too_long", (f"prompt of {len(text):,} characters, at least {len(text) // self.longest_token:,} "
                                    f"tokens; {self._over(budget)}")
            n = self._tokens(sample, text)
        except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
            return "render_error", f"{type(exc).__name__}: {exc}"
        return ("too_long", f"prompt of {n:,} tokens; {self._over(budget)}") if n > budget else None

    def _over(self, budget: int) -> str:
        return (f"the limit is {self.limit:,} tokens ({self.source}) less max_new_tokens {self.max_new_tokens}, "
                f"{budget:,} for the prompt")

    def _tokens(self, sample: Any, text: str) -> int:
        kwargs: dict[str, Any] = {"text": [text], "add_special_tokens": False}
        images = sample.load_images()
        if images:
            kwargs["images"] = [images]
        return len(self.processor(**kwargs)["input_ids"][0])


def _location(sample: Any, index: int, data_path: Path) -> tuple[str, int]:
    return tuple(sample.source) if sample.source is not None else (str(data_path), index)


def screen(samples: list, check: PromptScreen, bad_rows: Any, data_path: Path,
           advance: Callable[[int], Any]) -> list:
    """The samples that fit; the others are recorded in ``bad_rows`` with file, row and reason."""
    kept = []
    for i, sample in enumerate(samples):
        found = check.reason(sample)
        advance(1)
        if found is None:
            kept.append(sample)
        else:
            bad_rows.add(*_location(sample, i, data_path), *found)
    return kept


def generate_all(gen: Generator, samples: list, params: SamplingParams, batch_size: int, bad_rows: Any,
                 data_path: Path, on_batch: Callable[[int], Any]) -> tuple[list, list[str]]:
    """Responses ``batch_size`` samples at a time; a batch ``generate`` fails on is retried one
    sample at a time and the samples that still fail are skipped (recorded with the error), so
    one bad row never costs the results of the others."""
    kept, responses = [], []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        try:
            texts = first_texts(gen.generate(chunk, params))
            kept += chunk
            responses += texts
        except (RuntimeError, ValueError, OSError):  # retried one sample at a time
            for j, sample in enumerate(chunk):
                try:
                    responses += first_texts(gen.generate([sample], params))
                    kept.append(sample)
                except (RuntimeError, ValueError, OSError) as exc:
                    first_line = (str(exc).splitlines() or [""])[0][:300]
                    bad_rows.add(*_location(sample, start + j, data_path), "generate_error",
                                 f"{type(exc).__name__}: {first_line}")
        on_batch(len(chunk))
    return kept, responses


def run_eval(model_path: str | Path, data_path: str | Path, task: Any = "generic",
             out_dir: str | Path = "runs/eval", base_model: str | None = None, batch_size: int = 8,
             max_new_tokens: int = 64, system_prompt: str | None = None, limit: int | None = None,
             judge: Any = None, show_progress: bool = True, title: str | None = None,
             max_length: int | None = None, backend: str = "hf", backend_options: dict | None = None) -> dict:
    """Evaluate and write predictions, metrics, skipped rows and the report; returns the metrics.

    Rows that cannot be evaluated (unreadable, invalid, a prompt plus ``max_new_tokens`` over
    ``max_length`` -- by default the model's context --, a processor or ``generate`` failure)
    are left out, listed in ``skipped_rows.jsonl`` and counted in ``metrics.json``; every
    other row's result is written.

    ``task``: a built-in task name, ``path/to/file.py:Name`` or ``module:Name``, or a task
    object (e.g. a task's demo evaluating with itself).

    Raises:
        ConfigError: unknown task, a task that does not load or returns malformed scores, or
            a bad argument (the message lists the built-in tasks).
        ModelLoadError: the model directory is missing or holds no model.
        DataError: the data file is missing or unreadable.
    """
    from vlmtune.data.readers import read_samples
    from vlmtune.data.report import DataError
    from vlmtune.eval.report import write_report
    from vlmtune.eval.tasks import get_task, question_of, sample_id
    from vlmtune.models.loading import check_model_path, context_length, load_for_inference

    start = time.perf_counter()
    scorer = get_task(task, judge=resolve_judge_arg(judge))
    if batch_size < 1 or max_new_tokens < 1 or (limit is not None and limit < 0):
        raise ConfigError("batch_size and max_new_tokens must be >= 1 and limit >= 0")
    if max_length is not None and max_length <= max_new_tokens:
        raise ConfigError(f"max_length ({max_length}) must exceed max_new_tokens ({max_new_tokens}): "
                          "the prompt has to fit too")
    check_model_path(model_path)
    if base_model is not None:
        check_model_path(base_model)
    data_path = Path(data_path)  # a file, a folder or DIR:name; read_samples names what is missing

    samples, bad_rows = read_samples(data_path, require_assistant=False, limit=limit)
    n_read = len(samples)
    reason = scorer.check(samples) if hasattr(scorer, "check") else None
    if reason is not None:
        raise DataError(f"{data_path}: {reason}")
    if hasattr(scorer, "expand"):  # e.g. one prompt per turn of a trajectory
        samples = scorer.expand(samples)
    loaded = load_for_inference(model_path, base_model=base_model)
    context = context_length(loaded.model)
    token_limit = max_length or context
    source = "--max-length" if max_length else "the model's context, max_position_embeddings"
    out = Path(out_dir)
    with _progress(show_progress) as progress:
        bar = progress.add_task("checking prompts", total=len(samples))
        check = PromptScreen(loaded.processor, system_prompt, token_limit, max_new_tokens, source)
        samples = screen(samples, check, bad_rows, data_path, lambda k: progress.advance(bar, k))
        gen = build_generator(backend, loaded.model, loaded.processor, system_prompt=system_prompt,
                              batch_size=batch_size, options=backend_options)
        params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=False)
        bar = progress.add_task(f"eval {scorer.name}", total=len(samples))
        samples, responses = generate_all(gen, samples, params, batch_size, bad_rows, data_path,
                                          lambda k: progress.advance(bar, k))
    gen_seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    bad_rows.write_jsonl(out / "skipped_rows.jsonl")
    if not samples:
        raise DataError(f"{data_path}: no row could be evaluated ({bad_rows.summary()}); "
                        f"every skipped row is listed in {out / 'skipped_rows.jsonl'}")

    task_records, metrics = _scored(scorer.name, scorer.score(samples, responses), len(samples))
    records = []
    for i, (sample, response, rec) in enumerate(zip(samples, responses, task_records)):
        row: dict[str, Any] = {"id": sample_id(sample, i), "question": question_of(sample),
                               "image": _image_ref(sample), "level": rec.get("level"),
                               "gold": rec.get("gold"), "response": response, "pred": rec.get("pred"),
                               "correct": rec.get("correct"), "verdicts": rec.get("verdicts", {})}
        row.update({k: v for k, v in rec.items() if k not in row})
        records.append(row)

    write_predictions(records, out)
    metrics = dict(metrics)
    metrics["run"] = {
        "model": str(model_path), "base_model": base_model, "is_adapter": loaded.is_adapter,
        "data": str(data_path), "task": task if isinstance(task, str) else scorer.name, "n_samples": n_read,
        "n_prompts": len(samples),
        "skipped_rows": bad_rows.total, "skipped_by_reason": bad_rows.counts(),
        "skipped_rows_file": "skipped_rows.jsonl", "max_length": token_limit, "model_context": context,
        "batch_size": batch_size, "max_new_tokens": max_new_tokens, "system_prompt": system_prompt,
        "limit": limit, "generation_seconds": round(gen_seconds, 2),
        "wall_seconds": round(time.perf_counter() - start, 2),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, ensure_ascii=False, default=str))
    # thumbnails come from the samples themselves, so inline (bytes/PIL) images show too
    report_records = [dict(r, _image_obj=s.images[0] if s.images else None) for r, s in zip(records, samples)]
    write_report(out / "report", {Path(str(model_path)).name or "model": (report_records, metrics)},
                 title=title or f"vlmtune eval: {scorer.name} on {data_path.name}", task=scorer)
    metrics["run"]["wall_seconds"] = round(time.perf_counter() - start, 2)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, ensure_ascii=False, default=str))
    return metrics


def _scored(task: str, result: Any, n: int) -> tuple[list[dict], dict]:
    """A task's ``score`` result, checked: one record dict per prompt and a metrics dict."""
    ok = isinstance(result, tuple) and len(result) == 2
    records, metrics = result if ok else (None, None)
    if not (ok and isinstance(records, list) and isinstance(metrics, dict)
            and all(isinstance(r, dict) for r in records)):
        raise ConfigError(f"task {task!r}: score() must return (records: list of dicts, metrics: dict), "
                          f"got {type(result).__name__}")
    if len(records) != n:
        raise ConfigError(f"task {task!r}: score() returned {len(records)} records for {n} prompts")
    return records, metrics


def _flat(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def write_predictions(records: list[dict], out_dir: str | Path) -> tuple[Path, Path]:
    """``predictions.jsonl`` (nested) and ``predictions.csv`` (flat: ``verdicts.<k>`` columns)."""
    out = Path(out_dir)
    jsonl, csv_path = out / "predictions.jsonl", out / "predictions.csv"
    with jsonl.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    flat_rows = []
    for r in records:
        flat = {k: _flat(v) for k, v in r.items() if k != "verdicts"}
        for k, v in (r.get("verdicts") or {}).items():
            flat[f"verdicts.{k}"] = _flat(v)
        flat_rows.append(flat)
    columns: list[str] = [c for c in FIRST_COLUMNS if c != "verdicts"]
    for row in flat_rows:
        columns += [k for k in row if k not in columns]
    with csv_path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(flat_rows)
    return jsonl, csv_path


def registry_arg(registry: Any) -> Any:
    """An argparse ``type`` that accepts a registry's built-in names and ``module:attr`` /
    ``file.py:attr`` (checked without importing; a typo names the nearest built-in)."""
    from vlmtune.registry import RegistryError

    def check(value: str) -> str:
        try:
            return registry.check(value)
        except RegistryError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    check.__name__ = registry.kind  # argparse names the type in its message
    return check


def judge_flag(value: str) -> dict[str, Any]:
    """``--judge``: an ``http(s)://`` base URL or a recipe ``.yaml`` (its ``judge`` section) ->
    the recipe's HTTP judge; anything else names an offline judge (``eval.judge``)."""
    from vlmtune.config import HTTP_JUDGE, load_recipe

    if value.startswith(("http://", "https://")):
        return {"eval.judge": HTTP_JUDGE, "judge.base_url": value}
    if value.endswith((".yaml", ".yml")):
        return {"eval.judge": HTTP_JUDGE, "judge": load_recipe(value).judge.model_dump()}
    return {"eval.judge": value}


EVAL_FLAGS = {"model": "model.path", "base_model": "model.base_model", "data": "data.eval_path",
              "task": "eval.task", "out": "eval.out", "batch_size": "generation.batch_size",
              "max_new_tokens": "eval.max_new_tokens", "limit": "data.limit", "max_length": "eval.max_length",
              "system_prompt": "data.system_prompt", "judge": judge_flag}
"""Each flag of ``vlmtune eval`` is a shorthand for a recipe key (``config.recipe_from_args``)."""


def add_eval_args(p: argparse.ArgumentParser) -> None:
    from vlmtune.config import add_recipe_args
    from vlmtune.registry import JUDGES, TASKS

    add_recipe_args(p)
    g = p.add_argument_group("shorthands (each flag sets the recipe key named)")
    g.add_argument("--model", help="model.path: model directory (full model or PEFT adapter)")
    g.add_argument("--data", help="data.eval_path: eval data (.jsonl / .json / .parquet, canonical samples)")
    g.add_argument("--task", type=registry_arg(TASKS), metavar="TASK",
                   help=f"eval.task: how responses are scored (default: generic): {TASKS.describe_each()}")
    g.add_argument("--out", help="eval.out: output directory (default: output.dir/eval)")
    g.add_argument("--base-model", help="model.base_model: base model directory for an adapter "
                   "(default: the adapter's base_model_name_or_path)")
    g.add_argument("--batch-size", type=int, help="generation.batch_size: prompts per generate call (default 8)")
    g.add_argument("--max-new-tokens", type=int, help="eval.max_new_tokens (default 64)")
    g.add_argument("--limit", type=int, help="data.limit: evaluate only the first N samples")
    g.add_argument("--max-length", type=int,
                   help="eval.max_length: token limit of prompt + --max-new-tokens; longer rows are skipped and "
                        "listed in skipped_rows.jsonl (default: the model's context)")
    g.add_argument("--system-prompt", help="data.system_prompt: system prompt added to each sample")
    g.add_argument("--judge", help="eval.judge: judge of a task that takes one (clarify): an offline judge "
                   f"({JUDGES.describe()}; the task's default), an OpenAI-compatible base URL (judge.base_url), or "
                   "a recipe .yaml whose judge section to use")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def eval_out(recipe: Any) -> Path:
    """Where ``vlmtune eval`` writes: ``eval.out``, by default ``output.dir/eval``."""
    return Path(recipe.eval.out or Path(recipe.output.dir) / "eval")


def run_recipe_eval(recipe: Any, show_progress: bool = True) -> dict:
    """:func:`run_eval` with a recipe's keys (the resolved recipe is written to the output as
    ``config.yaml``)."""
    from vlmtune.config import HTTP_JUDGE, save_recipe

    if not recipe.model.path:
        raise ConfigError("vlmtune eval needs a model: --model DIR (model.path=DIR)")
    if not recipe.data.eval_path:
        raise ConfigError("vlmtune eval needs data: --data FILE (data.eval_path=FILE)")
    out = eval_out(recipe)
    judge = recipe.judge if recipe.eval.judge == HTTP_JUDGE else recipe.eval.judge
    metrics = run_eval(recipe.model.path, recipe.data.eval_path, task=recipe.eval.task or "generic", out_dir=out,
                       base_model=recipe.model.base_model, batch_size=recipe.generation.batch_size or 8,
                       max_new_tokens=recipe.eval.max_new_tokens, system_prompt=recipe.data.system_prompt,
                       limit=recipe.data.limit, judge=judge, show_progress=show_progress,
                       max_length=recipe.eval.max_length, backend=recipe.generation.backend,
                       backend_options=recipe.generation.options)
    save_recipe(recipe, out / "config.yaml")
    return metrics


def _plain(v: Any, depth: int) -> bool:
    """A scalar, or (``depth`` levels down) a dict of such: what the console shows as JSON."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    return depth > 0 and isinstance(v, dict) and all(_plain(x, depth - 1) for x in v.values())


def console_summary(metrics: dict) -> dict:
    """The metrics ``vlmtune eval`` prints as JSON: scalars and small nested dicts of scalars
    (e.g. strategic accuracy per level); tables and lists stay in metrics.json and the report."""
    return {k: v for k, v in metrics.items() if k != "run" and _plain(v, 2)
            and not (isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()))}


def cmd_eval(args: argparse.Namespace) -> int:
    from vlmtune.config import recipe_from_args

    recipe = recipe_from_args(args, EVAL_FLAGS)
    metrics = run_recipe_eval(recipe, show_progress=not getattr(args, "no_progress", False))
    out = eval_out(recipe)
    from vlmtune.eval.report import split_tables, text_table
    from vlmtune.eval.tasks import load_task

    task = load_task(recipe.eval.task or "generic")
    print(json.dumps(console_summary(metrics), indent=1, default=str))
    printed = getattr(task, "console_tables", None)  # default: every split table
    for key, title, table in split_tables(metrics, getattr(task, "report_tables", None)):
        if printed is None or key in printed:
            print(f"\n{title}\n{text_table(table)}")
    run = metrics["run"]
    if run["skipped_rows"]:
        reasons = ", ".join(f"{k} {v}" for k, v in run["skipped_by_reason"].items())
        print(f"skipped {run['skipped_rows']} row(s) ({reasons}): each listed with file, row and reason in "
              f"{out / 'skipped_rows.jsonl'}", file=sys.stderr)
    print(f"wrote {out / 'metrics.json'}, predictions.jsonl, predictions.csv, skipped_rows.jsonl, "
          "report/index.html, config.yaml")
    return 0


def main(argv: list[str] | None = None) -> int:
    from vlmtune.data.report import DataError
    from vlmtune.models.loading import ModelLoadError

    p = argparse.ArgumentParser(prog="vlmtune eval", description="evaluate a model on an eval set")
    add_eval_args(p)
    args = parse_args(p, argv)
    try:
        return cmd_eval(args)
    except (ConfigError, DataError, ModelLoadError, FileNotFoundError) as exc:
        print(f"vlmtune eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
