"""``vlmtune agent``: sequential step prediction where each step's memory is the previous
step's output. A scripted generator shows the carry-over with parseable (and broken)
outputs; one run on the tiny model shows the real path end to end."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from vlmtune.tasks.gui_agent.agent import CSV_COLUMNS, Agent, StepPrediction, load_agent, main, read_step, run_agent
from vlmtune.data.converters import convert
from vlmtune.data.converters.carepilot import build_prompt
from vlmtune.data.readers import read_samples
from vlmtune.data.report import DataError

HEADER = ["Task_id", "Slide_number", "Image_id", "Instruction", "Grounding",
          "Short_Term_Memory", "Long_term_Memory", "Output"]
GOAL = "Segment the liver"
GOLD = [("CLICK", "Segment Editor"), ("SCROLL", "axial view"), ("SEGMENT", "liver"), ("ZOOM", "sagittal"),
        ("COMPLETE", "")]


def png(color: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def out_json(action: str, target: str, stm: str | None = None, ltm: str | None = None) -> str:
    obj = {"action": action, "target": target}
    if stm is not None:
        obj["short_term_memory"] = stm
    if ltm is not None:
        obj["long_term_memory"] = ltm
    return json.dumps(obj)


def write_task(root: Path, second_task: bool = False) -> Path:
    """Task T1: 5 steps (rows shuffled in the file), gold memory in the CSV as CarePilot has it.
    Optional T2: a missing screenshot, an unreadable one, then a good one."""
    shots = root / "shots"
    shots.mkdir(parents=True)
    rows = []
    stm, ltm = "", ""
    for k, (action, target) in enumerate(GOLD, start=1):
        (shots / f"t1_{k}.png").write_bytes(png((40 * k, 0, 255 - 40 * k)))
        rows.append(["T1", str(k), f"t1_{k}", GOAL, f"screen {k}", stm, ltm,
                     out_json(action, target, f"gold stm {k}", f"gold ltm {k}")])
        stm, ltm = f"gold stm {k}", f"gold ltm {k}"
    rows = [rows[i] for i in (2, 0, 4, 1, 3)]  # the file order is not the step order
    if second_task:
        (shots / "t2_2.png").write_bytes(b"\x89PNG not really")
        (shots / "t2_3.png").write_bytes(png((0, 200, 0)))
        rows += [["T2", "1", "t2_gone", "Zoom in", "", "start", "task: zoom", out_json("ZOOM", "axial")],
                 ["T2", "2", "t2_2", "Zoom in", "", "x", "y", out_json("CLICK", "Zoom tool")],
                 ["T2", "3", "t2_3", "Zoom in", "", "x", "y", "```json\n" + out_json("COMPLETE", "") + "\n```"]]
    path = root / "task.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class Scripted:
    """A generator returning canned outputs in turn and keeping the prompts it was shown."""

    def __init__(self, outputs: list[str]):
        self.outputs, self.prompts = list(outputs), []

    def __call__(self, sample) -> str:
        assert len(sample.images) == 1 and sample.messages[0]["content"][0] == {"type": "image"}
        sample.load_images()  # an unreadable screenshot fails here, as in the real generator
        self.prompts.append(sample.messages[0]["content"][1]["text"])
        return self.outputs.pop(0)


SCRIPT = [
    out_json("CLICK", "Segment Editor", "opened editor", "task: liver"),              # json
    "```json\n{'action': 'scroll', 'target': 'axial view', 'short_term_memory': 'scrolled',"
    " 'long_term_memory': 'task: liver; editor open',}\n```",                          # repaired
    "I am not sure what to do here.",                                                 # unparsed
    out_json("ZOOM", "sagittal"),                                                     # no memory
    out_json("COMPLETE", "", "done", "liver segmented"),
]


def test_read_step_memory_rules():
    ok = read_step(out_json("CLICK", "A", "s", "l"), "old s", "old l")
    assert (ok.action, ok.target, ok.short_term_memory, ok.long_term_memory, ok.status) == ("CLICK", "A", "s", "l", "ok")
    bad = read_step("{{{ nothing", "old s", "old l")
    assert bad.status == "unparsed" and bad.parse_method == "failed" and not bad.parsed
    assert (bad.short_term_memory, bad.long_term_memory) == ("old s", "old l")
    half = read_step('{"action": "TEXT", "target": "name", "Short Term Memory": null, "ltm": ["a", "b"]}', "s0", "l0")
    assert half.status == "ok" and half.short_term_memory == "" and half.long_term_memory == '["a", "b"]'
    regex = read_step("action: click target: OK", "s0", "l0")
    assert regex.status == "no_memory" and regex.action == "CLICK" and regex.short_term_memory == "s0"
    assert read_step("", None, None).status == "unparsed"


def test_scripted_agent_carries_its_own_memory(tmp_path):
    data = write_task(tmp_path / "care", second_task=True)
    gen = Scripted(SCRIPT + [out_json("COMPLETE", "", "t2 done", "t2 ltm")])
    metrics = run_agent(None, data, tmp_path / "out", image_dir=data.parent / "shots", agent=Agent(gen))
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [(r["Task_id"], r["Slide_number"]) for r in rows] == [("T1", str(k)) for k in range(1, 6)] + [
        ("T2", "1"), ("T2", "2"), ("T2", "3")]
    t1 = rows[:5]
    assert [r["status"] for r in t1] == ["ok", "ok", "unparsed", "no_memory", "ok"]
    assert [r["parse_method"] for r in t1] == ["json", "repaired", "failed", "json", "json"]
    assert [r["pred_action"] for r in t1] == ["CLICK", "SCROLL", "", "ZOOM", "COMPLETE"]
    assert [r["gold_action"] for r in t1] == [a for a, _ in GOLD]
    assert [r["action_match"] for r in t1] == ["true", "true", "false", "true", "true"]
    assert t1[2]["raw_output"] == SCRIPT[2]
    # the memory fed to step k+1 is what step k's output produced (or carried over)
    assert (t1[0]["input_short_term_memory"], t1[0]["input_long_term_memory"]) == ("", "")  # the CSV's step 1
    for prev, nxt in zip(t1, t1[1:]):
        assert nxt["input_short_term_memory"] == prev["output_short_term_memory"]
        assert nxt["input_long_term_memory"] == prev["output_long_term_memory"]
    assert [r["output_short_term_memory"] for r in t1] == ["opened editor", "scrolled", "scrolled", "scrolled", "done"]
    assert t1[3]["output_long_term_memory"] == "task: liver; editor open"
    # ... and it is exactly what the model was shown, in the converter's training prompt
    for k, (r, prompt) in enumerate(zip(t1, gen.prompts), start=1):
        assert prompt == build_prompt(GOAL, f"screen {k}", r["input_short_term_memory"], r["input_long_term_memory"],
                                      actions=sorted(a for a, _ in GOLD))
    assert "## Short Term Memory\nscrolled\n\n## Long Term Memory\ntask: liver; editor open" in gen.prompts[3]
    assert "gold stm" not in "".join(gen.prompts)  # no gold memory leaks in after step 1
    # T2: a missing and an unreadable screenshot are recorded, not run; memory passes them by
    t2 = rows[5:]
    assert [r["status"] for r in t2] == ["missing_image", "unreadable_image", "ok"]
    assert "t2_gone" in t2[0]["error"] and t2[0]["raw_output"] == "" and t2[0]["parse_method"] == "not_run"
    assert t2[2]["input_short_term_memory"] == "start" and t2[2]["input_long_term_memory"] == "task: zoom"
    assert t2[2]["step_match"] == "true" and t2[2]["gold_action"] == "COMPLETE"
    assert len(gen.prompts) == 6
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["num_steps"] == 8 and saved["num_tasks"] == 2
    assert saved["action_accuracy"] == pytest.approx(5 / 8) and saved["step_accuracy"] == pytest.approx(5 / 8)
    assert saved["task_accuracy"] == 0.0 and saved["parse_failures"] == 1 and saved["steps_not_run"] == 2
    assert saved["status_counts"] == {"ok": 4, "unparsed": 1, "no_memory": 1, "missing_image": 1,
                                      "unreadable_image": 1}


def test_scripted_agent_all_right_and_the_converter_prompt(tmp_path):
    data = write_task(tmp_path / "care")
    perfect = [out_json(a, t, f"m{k}", f"l{k}") for k, (a, t) in enumerate(GOLD, start=1)]
    gen = Scripted(perfect)
    metrics = run_agent(None, data, tmp_path / "out", image_dir=data.parent / "shots", agent=Agent(gen))
    assert {k: metrics[k] for k in ("action_accuracy", "target_accuracy", "step_accuracy", "task_accuracy")} == {
        "action_accuracy": 1.0, "target_accuracy": 1.0, "step_accuracy": 1.0, "task_accuracy": 1.0}
    # step 1 (CSV memory) is byte for byte the prompt the carepilot converter trains on
    convert("carepilot", data, tmp_path / "train.parquet", image_dir=data.parent / "shots", progress=False)
    samples, _ = read_samples(tmp_path / "train.parquet")
    step1 = next(s for s in samples if s.meta["step"] == 1)
    assert step1.messages[0]["content"][1]["text"] == gen.prompts[0]
    # ablation: a dropped section is dropped at inference too; memory is still tracked
    gen2 = Scripted(perfect)
    run_agent(None, data, tmp_path / "out2", image_dir=data.parent / "shots",
              agent=Agent(gen2, drop={"short_term", "grounding"}))
    assert "## Short Term Memory" not in gen2.prompts[1] and "## Long Term Memory\nl1" in gen2.prompts[1]
    assert read_csv(tmp_path / "out2" / "predictions.csv")[1]["input_short_term_memory"] == "m1"


def test_agent_errors(tmp_path):
    with pytest.raises(ValueError, match="can drop"):
        Agent(lambda s: "", drop={"instruction"})
    with pytest.raises(DataError, match="not found"):
        run_agent(None, tmp_path / "nope.csv", tmp_path / "o", agent=Agent(lambda s: ""))
    bad = tmp_path / "bad.csv"
    bad.write_text("Task_id,Slide,Image_id,Instruction,Output\nT1,1,a.png,x,{}\n")
    with pytest.raises(DataError, match="Slide_number"):
        run_agent(None, bad, tmp_path / "o", agent=Agent(lambda s: ""))
    assert main(["--model", str(tmp_path / "no-model"), "--data", str(bad), "--out", str(tmp_path / "o")]) == 2


def test_agent_on_tiny_model(tmp_path, tiny_model_dir, capsys):
    model = tiny_model_dir("qwen2_vl")
    data = write_task(tmp_path / "care")
    out = tmp_path / "out"
    code = main(["--model", str(model), "--data", str(data), "--out", str(out), "--image-dir",
                 str(data.parent / "shots"), "--max-new-tokens", "12", "--no-progress"])
    assert code == 0 and "predictions.csv" in capsys.readouterr().out
    rows = read_csv(out / "predictions.csv")
    assert [(r["Task_id"], r["Slide_number"]) for r in rows] == [("T1", str(k)) for k in range(1, 6)]
    for prev, nxt in zip(rows, rows[1:]):  # garbage in, but the chain holds
        assert nxt["input_short_term_memory"] == prev["output_short_term_memory"]
        assert nxt["input_long_term_memory"] == prev["output_long_term_memory"]
    for r in rows:
        assert r["status"] in ("ok", "no_memory", "unparsed")
        if r["status"] == "unparsed":  # recorded, memory unchanged
            assert r["output_short_term_memory"] == r["input_short_term_memory"]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("action_accuracy", "target_accuracy", "step_accuracy", "task_accuracy", "parse_failures"):
        assert key in metrics
    assert metrics["num_steps"] == 5 and metrics["run"]["model"] == str(model)
    agent = load_agent(model, actions=["CLICK", "COMPLETE"], max_new_tokens=4)
    step = agent.predict_step(data.parent / "shots" / "t1_1.png", GOAL, "mem s", "mem l")
    assert isinstance(step, StepPrediction) and isinstance(step.raw, str)
    assert "## Short Term Memory\nmem s" in step.prompt
    if not step.parsed:
        assert (step.short_term_memory, step.long_term_memory) == ("mem s", "mem l")


def test_rows_that_cannot_be_placed_are_reported(tmp_path):
    data = write_task(tmp_path / "care")
    with data.open("a", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["", "6", "t1_1", GOAL, "", "", "", out_json("CLICK", "x")])  # no task id
        w.writerow(["T1", "7", "t1_1"])  # too few cells
    perfect = [out_json(a, t, "m", "l") for a, t in GOLD]
    metrics = run_agent(None, data, tmp_path / "out", image_dir=data.parent / "shots", agent=Agent(Scripted(perfect)))
    assert metrics["num_steps"] == 5 and metrics["bad_rows"] == 2
    assert metrics["bad_rows_by_reason"] == {"missing_value": 1, "bad_schema": 1}
    errors = [json.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["row"] for e in errors) == [7, 8]


def test_agent_flags_are_recipe_shorthands(tmp_path, capsys):
    import argparse

    from vlmtune.config import recipe_from_args
    from vlmtune.tasks.gui_agent.agent import AGENT_FLAGS, add_agent_args

    p = argparse.ArgumentParser()
    add_agent_args(p)
    args = p.parse_args(["agent.max_new_tokens=9", "--model", "M", "--data", "D.csv", "--drop", "grounding,short_term",
                         "--drop", "long_term", "--column", "goal=Task", "--actions", "CLICK, COMPLETE",
                         "--max-new-tokens", "7", "--image-dir", "shots"])
    r = recipe_from_args(args, AGENT_FLAGS)
    assert (r.model.path, r.data.eval_path, r.agent.image_dir) == ("M", "D.csv", "shots")
    assert r.agent.drop == ["grounding", "short_term", "long_term"] and r.agent.columns == {"goal": "Task"}
    assert r.agent.actions == ["CLICK", "COMPLETE"] and r.agent.max_new_tokens == 9  # the override wins
    assert main(["--data", "D.csv"]) == 2
    assert "needs a model: --model DIR (model.path=DIR)" in capsys.readouterr().err
