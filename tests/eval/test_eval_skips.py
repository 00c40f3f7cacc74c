"""``vlmtune eval`` skips rows it cannot evaluate, lists them with file, row and reason, and
writes every other row's result: a 10 MB row, rows over ``--max-length``, rows that fail."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from vlmtune.cli import main
from vlmtune.data.builtin import make_shapes_dataset
from vlmtune.data.report import DataError
from vlmtune.eval.run import run_eval

BIG = 10 * 2**20  # characters in the runaway row


@pytest.fixture(scope="module")
def data_with_huge_row(tmp_path_factory) -> Path:
    """The shapes eval set (6 rows) with a 10 MB question as line 3 and a broken line 6."""
    out = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(out, n=1, seed=0, eval_n=6)
    lines = (out / "eval.jsonl").read_text().splitlines()
    huge = {"messages": [{"role": "user", "content": [{"type": "text", "text": ("red circle " * BIG)[:BIG]}]},
                         {"role": "assistant", "content": [{"type": "text", "text": "red."}]}]}
    lines[2:2] = [json.dumps(huge)]
    lines[5:5] = ['{"messages": [broken']
    path = out / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _skipped(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "skipped_rows.jsonl").read_text().splitlines()]


def test_huge_row_is_skipped_and_the_others_are_written(tmp_path, tiny_model_dir, data_with_huge_row):
    start = time.perf_counter()
    metrics = run_eval(tiny_model_dir("qwen2_vl"), data_with_huge_row, out_dir=tmp_path, batch_size=4,
                       max_new_tokens=4, show_progress=False)
    seconds = time.perf_counter() - start
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["n"] == metrics["run"]["n_prompts"] == 6 and metrics["run"]["n_samples"] == 7
    assert all(len(r["question"]) < 1000 for r in rows)
    skipped = _skipped(tmp_path)
    skipped.sort(key=lambda s: s["row"])
    assert [(s["row"], s["reason"]) for s in skipped] == [(3, "too_long"), (6, "malformed_json")]
    assert all(s["file"] == str(data_with_huge_row) for s in skipped)
    assert "the model's context" in skipped[0]["detail"] and "4,096" in skipped[0]["detail"]
    run = metrics["run"]
    assert run["skipped_rows"] == 2 and run["skipped_by_reason"] == {"too_long": 1, "malformed_json": 1}
    assert run["max_length"] == run["model_context"] == 4096
    assert (tmp_path / "report" / "index.html").is_file() and (tmp_path / "predictions.csv").is_file()
    assert seconds < 120  # the huge row is refused from its length, never tokenized


def test_max_length_counts_image_tokens_exactly(tmp_path, tiny_model_dir, data_with_huge_row):
    """A limit just below one prompt's real length (text + image tokens) skips exactly that
    kind of row, measured by the processor, not guessed."""
    from vlmtune.batching.render import render_prompt
    from vlmtune.data.readers import read_samples
    from vlmtune.models.loading import load_for_inference

    model = tiny_model_dir("qwen2_vl")
    samples, _ = read_samples(data_with_huge_row.parent / "eval.jsonl", require_assistant=False)
    processor = load_for_inference(model).processor
    lengths = [render_prompt(s, processor)["input_ids"].shape[1] for s in samples]
    cut = sorted(set(lengths))[-1]  # the longest prompts do not fit, the others do
    max_new = 4
    metrics = run_eval(model, data_with_huge_row, out_dir=tmp_path, batch_size=4, max_new_tokens=max_new,
                       show_progress=False, max_length=cut - 1 + max_new)
    longest = sum(n == cut for n in lengths)
    assert longest < len(lengths) and metrics["n"] == len(lengths) - longest
    too_long = [s for s in _skipped(tmp_path) if s["reason"] == "too_long"]
    assert len(too_long) == longest + 1  # and the 10 MB row
    assert any(f"prompt of {cut:,} tokens" in s["detail"] for s in too_long)
    assert all("--max-length" in s["detail"] for s in too_long)


def test_nothing_fits_is_an_error_that_still_lists_the_rows(tmp_path, tiny_model_dir, data_with_huge_row):
    with pytest.raises(DataError, match="no row could be evaluated .*too_long 7"):
        run_eval(tiny_model_dir("qwen2_vl"), data_with_huge_row, out_dir=tmp_path, max_new_tokens=4,
                 show_progress=False, max_length=10)
    assert len(_skipped(tmp_path)) == 8


def test_cli_prints_one_line_about_the_skipped_rows(tmp_path, tiny_model_dir, data_with_huge_row, capsys):
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_model_dir("qwen2_vl")), "--data", str(data_with_huge_row),
                 "--out", str(out), "--max-new-tokens", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    reasons = "(malformed_json 1, too_long 1|too_long 1, malformed_json 1)"
    line = rf"skipped 2 row\(s\) \({reasons}\): each listed with file, row and reason in {out / 'skipped_rows.jsonl'}\n"
    assert re.search(line, err), err


def test_max_length_must_leave_room_for_the_prompt(tmp_path, tiny_model_dir, data_with_huge_row):
    from vlmtune.config import ConfigError

    with pytest.raises(ConfigError, match="must exceed max_new_tokens"):
        run_eval(tiny_model_dir("qwen2_vl"), data_with_huge_row, out_dir=tmp_path, max_new_tokens=8,
                 max_length=8, show_progress=False)


def test_a_failing_batch_costs_only_its_bad_row(tiny_model_dir, data_with_huge_row):
    """An image that vanishes after the rows were checked fails its batch's ``generate``; the
    batch is retried one row at a time and only that row is skipped."""
    from vlmtune.data.readers import read_samples
    from vlmtune.data.report import BadRows
    from vlmtune.eval.run import generate_all
    from vlmtune.models.loading import load_for_inference
    from vlmtune.rollout.generator import SamplingParams
    from vlmtune.rollout.hf import HFGenerator

    samples, _ = read_samples(data_with_huge_row.parent / "eval.jsonl", require_assistant=False)
    samples[1].images = [str(data_with_huge_row.parent / "vanished.png")]
    loaded = load_for_inference(tiny_model_dir("qwen2_vl"))
    bad, done = BadRows(), []
    kept, responses = generate_all(HFGenerator(loaded.model, loaded.processor, batch_size=3), samples,
                                   SamplingParams(max_new_tokens=2, do_sample=False), 3, bad, data_with_huge_row,
                                   done.append)
    assert len(kept) == len(responses) == 5 and samples[1] not in kept and done == [3, 3]
    (row,) = bad.rows
    assert (row.file, row.row, row.reason) == (samples[1].source[0], samples[1].source[1], "generate_error")
    assert "vanished.png" in row.detail
