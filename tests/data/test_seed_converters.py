"""The seed systems' files exactly as upstream writes them, converted without extra flags.

Fixtures follow the upstream writers: ARLArena's ``recipe/game_agent/eval_game_agent.py``
(per-turn inline ``{"format": "png_base64", "data"}`` or ``null`` images, ``json.dump(...,
indent=2)``) and ``json_to_parquet.py`` (pandas ``read_json`` -> ``to_parquet``, one file per
JSON file of a folder); ABL's ``tuning_sft/datamodules.py`` tree (``dataset/{train,test}_
{ambig,unambig}_qa_description.jsonl`` + ``*_raw_images/``, records as the generation scripts
write them, ``{"error": ...}`` lines included) and ``tuning_grpo/dataset/{train,val}.jsonl``;
CarePilot CSVs whose ``Output`` nests the action.
"""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import pytest
from test_converters import read_back, run_cli, text_of, write_care_csv  # tests/data is on sys.path (prepend mode)
from test_converters import png as image_bytes

from vlmtune.tasks.gui_agent.agent import Agent, read_tasks, run_agent
from vlmtune.data.converters import ConvertError, NothingConverted, convert
from vlmtune.data.converters.carepilot import build_prompt, find_action, parse_output
from vlmtune.data.sample import BadSample


def errors_of(output: Path) -> list[dict]:
    path = output.with_name(output.stem + ".errors.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------- ARLArena

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def inline(color: tuple[int, int, int]) -> dict:
    """A turn image as eval_game_agent.py's _serialize_image_for_json writes it."""
    return {"format": "png_base64", "data": base64.b64encode(image_bytes(color)).decode("utf-8")}


def turn(step: int, image: dict | None, output: str = "<think>push</think><action>up</action>") -> dict:
    # inputs: the rollout's raw_prompt, one user message whose text holds the <image> marker
    obs = f"You are solving Sokoban.\nYour current observation is: <image>\nStep {step}. Your admissible actions ..."
    return {"step": step, "inputs": [{"content": obs, "role": "user"}], "outputs": output, "image": image}


def trajectory(idx: int, score: float, images: list[dict | None]) -> dict:
    return {"sample_idx": idx, "task_score": score, "turns": [turn(k, im) for k, im in enumerate(images)]}


def dump(path: Path, trajectories: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        json.dump(trajectories, f, ensure_ascii=False, indent=2)  # as the eval script does
    return path


def test_arlarena_inline_and_null_turn_images(tmp_path: Path, capsys) -> None:
    path = dump(tmp_path / "high_score_multiturn_texts_seed0.json", [
        trajectory(0, 1.0, [inline(RED), None, inline(BLUE)]),
        trajectory(1, 0.95, [None, None]),
        trajectory(4, 0.5, [inline(GREEN)]),
    ])
    out = tmp_path / "arl.parquet"
    assert run_cli(["--from", "arlarena", str(path), str(out), "--min-score", "0.9", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "converted 2 rows, skipped 1 rows"
    first, second = read_back(out)
    assert [m["role"] for m in first.messages] == ["user", "assistant"] * 3
    assert first.messages[0]["content"] == [
        {"type": "text", "text": "You are solving Sokoban.\nYour current observation is: "}, {"type": "image"},
        {"type": "text", "text": "\nStep 0. Your admissible actions ..."}]
    # a null image: the turn has no image, and its marker does not become one
    assert first.messages[2]["content"] == [{"type": "text", "text": "You are solving Sokoban.\nYour current "
                                             "observation is: \nStep 1. Your admissible actions ..."}]
    assert [im.getpixel((0, 0)) for im in first.load_images()] == [RED, BLUE]
    assert text_of(first.messages[5]) == "<think>push</think><action>up</action>"
    assert first.meta == {"sample_idx": 0, "task_score": 1.0, "num_turns": 3,
                          "source_file": "high_score_multiturn_texts_seed0.json"}
    assert second.images == [] and second.meta["sample_idx"] == 1
    assert [(e["row"], e["reason"]) for e in errors_of(out)] == [(2, "below_min_score")]


def test_arlarena_per_turn_samples(tmp_path: Path, capsys) -> None:
    """--per-turn: each turn its own sample, as a policy that sees one turn at a time is prompted."""
    path = dump(tmp_path / "t.json", [trajectory(0, 1.0, [inline(RED), None, inline(BLUE)]),
                                      trajectory(1, 0.0, [inline(GREEN)])])
    out = tmp_path / "turns.parquet"
    assert run_cli(["--from", "arlarena", str(path), str(out), "--min-score", "0.9", "--per-turn",
                    "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "converted 3 rows, skipped 1 rows"
    turns = read_back(out)
    assert [[m["role"] for m in s.messages] for s in turns] == [["user", "assistant"]] * 3
    assert [s.meta["step"] for s in turns] == [0, 1, 2]
    assert [[im.getpixel((0, 0)) for im in s.load_images()] for s in turns] == [[RED], [], [BLUE]]
    assert "Step 2." in text_of(turns[2].messages[0])
    assert text_of(turns[2].messages[1]) == "<think>push</think><action>up</action>"
    assert [(e["row"], e["reason"]) for e in errors_of(out)] == [(1, "below_min_score")]


def test_arlarena_folder_of_trajectory_files(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints" / "sft"
    dump(folder / "high_score_multiturn_texts_seed0.json", [trajectory(0, 1.0, [inline(RED), inline(GREEN)])])
    dump(folder / "high_score_multiturn_texts_seed1.json", [
        trajectory(0, 1.0, [inline(BLUE)]),
        trajectory(1, 1.0, [{"format": "png_base64", "data": "!!not base64!!" * 8}]),
        trajectory(2, 1.0, [{"format": "gif_base64", "data": "R0lGOD"}]),
    ])
    out = folder / "train.parquet"  # the output may sit in the input folder, and is not read back as input
    for _ in range(2):
        res = convert("arlarena", folder, out, progress=False)
        assert (res.converted, res.skipped) == (2, 2)
    samples = read_back(out)
    assert [(s.meta["source_file"], s.meta["sample_idx"], len(s.images)) for s in samples] == [
        ("high_score_multiturn_texts_seed0.json", 0, 2), ("high_score_multiturn_texts_seed1.json", 0, 1)]
    assert [s.load_images()[0].getpixel((0, 0)) for s in samples] == [RED, BLUE]
    bad = {(Path(e["file"]).name, e["row"]): (e["reason"], e["detail"]) for e in errors_of(out)}
    assert bad[("high_score_multiturn_texts_seed1.json", 1)][0] == "unreadable_image"
    assert "turns[0].image.data" in bad[("high_score_multiturn_texts_seed1.json", 1)][1]
    assert bad[("high_score_multiturn_texts_seed1.json", 2)][0] == "bad_schema"


def test_arlarena_json_to_parquet_output(tmp_path: Path) -> None:
    """json_to_parquet.py: ``pd.read_json(file).to_parquet(out)`` per JSON file of a folder."""
    pd = pytest.importorskip("pandas")
    src = dump(tmp_path / "json" / "high_score_multiturn_texts_seed0.json",
               [trajectory(0, 1.0, [inline(RED), None]), trajectory(1, 1.0, [inline(GREEN)])])
    (tmp_path / "parquet").mkdir()
    pd.read_json(src).to_parquet(tmp_path / "parquet" / f"{src.stem}.parquet")
    res = convert("arlarena", tmp_path / "parquet", tmp_path / "arl.parquet", progress=False)
    assert (res.converted, res.skipped) == (2, 0)
    a, b = read_back(tmp_path / "arl.parquet")
    assert [im.getpixel((0, 0)) for im in a.load_images()] == [RED] and a.meta["num_turns"] == 2
    assert [im.getpixel((0, 0)) for im in b.load_images()] == [GREEN]


def test_arlarena_earliest_eval_script_without_images(tmp_path: Path) -> None:
    """The first eval_game_agent.py wrote turns without an ``image`` key: text-only turns."""
    traj = trajectory(0, 1.0, [None, None])
    for t in traj["turns"]:
        del t["image"]
    res = convert("arlarena", dump(tmp_path / "t.json", [traj]), tmp_path / "o.parquet", progress=False)
    assert res.converted == 1
    sample = read_back(tmp_path / "o.parquet")[0]
    assert sample.images == [] and "<image>" not in text_of(sample.messages[0])


# ---------------------------------------------------------------------------- no rows


def test_zero_rows_leave_no_file_and_say_why(tmp_path: Path, capsys) -> None:
    path = dump(tmp_path / "low.json", [trajectory(0, 0.2, [inline(RED)]), trajectory(1, 0.5, [None])])
    out = tmp_path / "none.parquet"
    with pytest.raises(NothingConverted) as err:
        convert("arlarena", path, out, min_score=0.9, progress=False)
    assert not out.exists()
    msg = str(err.value)
    assert "\n" not in msg and "no rows converted, 2 skipped (below_min_score 2)" in msg
    assert "row 0: below_min_score: task_score 0.2 <= min_score 0.9" in msg and "none.errors.jsonl" in msg
    assert len(errors_of(out)) == 2
    assert run_cli(["--from", "arlarena", str(path), str(out), "--min-score", "0.9", "--no-progress"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlmtune convert: error: ") and "below_min_score 2" in lines[0]
    assert not out.exists() and "wrote" not in captured.out


# ---------------------------------------------------------------------------- ABL (SFT tree)


def abl_line(image: str, question: str, answers: list[str], fenced: bool = False) -> str:
    """One record as dataset_generation/qa(step2).py writes it (annotation fields kept, the
    LLM outputs ``entity_description`` and ``qa`` as strings)."""
    entity = json.dumps({"objects": [{"name": "man_1", "attributes": {"color": "red shirt"}},
                                     {"name": "man_2", "attributes": {"color": "blue shirt"}}],
                         "relation": "man_1 is left of man_2"}, indent=2)
    qa = json.dumps({"question": question, "answers": {str(i + 1): a for i, a in enumerate(answers)}}, indent=2)
    return json.dumps({"image_filename": image, "image_path": f"flickr8k/Images/{image}",
                       "visualization_path": f"output_vis/{image}", "count_label": "two men",
                       "entity_description": f"```json\n{entity}\n```" if fenced else entity, "qa": qa},
                      ensure_ascii=False)


ANSWERS = ["He wears a red shirt.", "A blue coat.", "Nothing.", "Do you mean the man on the left?"]
COLORS = {"train_ambig": (200, 0, 0), "train_unambig": (0, 200, 0), "test_ambig": (0, 0, 200),
          "test_unambig": (200, 200, 0)}


@pytest.fixture
def abl_tree(tmp_path: Path) -> Path:
    """tuning_sft's ``dataset/``: four jsonl files, four *_raw_images folders; the same image
    file name in every folder (in a different colour) shows each file uses its own folder."""
    root = tmp_path / "tuning_sft" / "dataset"
    for prefix, color in COLORS.items():
        (root / f"{prefix}_raw_images").mkdir(parents=True)
        (root / f"{prefix}_raw_images" / "1000268201_693b08cb0e.jpg").write_bytes(image_bytes(color, fmt="JPEG"))
        lines = [abl_line("1000268201_693b08cb0e.jpg", f"{prefix}: what is the man wearing?", ANSWERS,
                          fenced=prefix.endswith("_ambig"))]
        if prefix == "train_ambig":
            lines.insert(0, json.dumps({"error": "Error code: 429 - rate limited"}))
            lines.append(abl_line("gone.jpg", "Where?", ANSWERS))
        (root / f"{prefix}_qa_description.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_abl_sft_tree_by_split(abl_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "train.parquet"
    res = convert("abl", abl_tree, out, split="train", progress=False)
    assert (res.converted, res.skipped) == (2, 2)
    amb, unamb = read_back(out)
    assert amb.meta["type"] == "ambig" and text_of(amb.messages[1]) == ANSWERS[3]
    assert unamb.meta["type"] == "unambig" and text_of(unamb.messages[1]) == ANSWERS[0]
    assert text_of(amb.messages[0]) == "train_ambig: what is the man wearing?"
    assert amb.meta["facts"]["relation"] == "man_1 is left of man_2" and amb.meta["answer_key"] == "4"
    assert amb.load_images()[0].getpixel((4, 4))[0] > 150 and unamb.load_images()[0].getpixel((4, 4))[1] > 150
    assert {(Path(e["file"]).name, e["row"]): e["reason"] for e in errors_of(out)} == {
        ("train_ambig_qa_description.jsonl", 1): "bad_schema", ("train_ambig_qa_description.jsonl", 3): "missing_image"}
    res = convert("abl", abl_tree, tmp_path / "test.parquet", split="test", progress=False)
    assert (res.converted, res.skipped) == (2, 0)
    assert [s.meta["question"].split(":")[0] for s in read_back(tmp_path / "test.parquet")] == ["test_ambig",
                                                                                                 "test_unambig"]


def test_abl_never_merges_splits(abl_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=r"splits \['test', 'train'\]; pass --split test\|train"):
        convert("abl", abl_tree, tmp_path / "all.parquet", progress=False)
    with pytest.raises(ConvertError, match="no 'val' file"):
        convert("abl", abl_tree, tmp_path / "v.parquet", split="val", progress=False)
    # one file needs no split; its images are still found in its own *_raw_images folder
    res = convert("abl", abl_tree / "test_unambig_qa_description.jsonl", tmp_path / "one.parquet", progress=False)
    assert res.converted == 1
    assert read_back(tmp_path / "one.parquet")[0].load_images()[0].getpixel((4, 4))[2] < 60  # yellow, not blue


def test_abl_image_dir_holding_the_raw_images_folders(abl_tree: Path, tmp_path: Path) -> None:
    """jsonl files moved elsewhere: --image-dir names the dataset folder with *_raw_images."""
    elsewhere = tmp_path / "qa"
    elsewhere.mkdir()
    src = abl_tree / "test_ambig_qa_description.jsonl"
    (elsewhere / src.name).write_bytes(src.read_bytes())
    res = convert("abl", elsewhere, tmp_path / "o.parquet", image_dir=abl_tree, progress=False)
    assert res.converted == 1


# ---------------------------------------------------------------------------- ABL (GRPO jsonl)


@pytest.fixture
def grpo_dataset(tmp_path: Path) -> Path:
    """tuning_grpo/dataset: train.jsonl and val.jsonl, images under flickr8k/Images beside them."""
    root = tmp_path / "tuning_grpo" / "dataset"
    (root / "flickr8k" / "Images").mkdir(parents=True)
    for name, color in (("3118534315_cc03e5ddab.jpg", RED), ("2528547068_7d37479b9b.jpg", GREEN)):
        (root / "flickr8k" / "Images" / name).write_bytes(image_bytes(color, fmt="JPEG"))
    rows = [
        {"image": "flickr8k/Images/3118534315_cc03e5ddab.jpg", "level": "ambig",
         "question": "What is the man wearing?", "answer": "Are you asking about the man on the left or the right?"},
        {"image": "flickr8k/Images/2528547068_7d37479b9b.jpg", "level": "unambig",
         "question": "What is the child wearing?", "answer": "The child is wearing a pink and white striped top."},
        {"image": "flickr8k/Images/2528547068_7d37479b9b.jpg", "level": "maybe", "question": "Q?", "answer": "A."},
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (root / "val.jsonl").write_text(json.dumps(rows[0]) + "\n")
    return root


def test_abl_grpo_jsonl(grpo_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "grpo.parquet"
    res = convert("abl", grpo_dataset / "train.jsonl", out, progress=False)
    assert (res.converted, res.skipped) == (2, 1)
    amb, unamb = read_back(out)
    assert amb.meta == {"type": "ambig", "question": "What is the man wearing?",
                        "image_filename": "flickr8k/Images/3118534315_cc03e5ddab.jpg"}
    assert text_of(amb.messages[1]) == "Are you asking about the man on the left or the right?"
    assert unamb.meta["type"] == "unambig" and unamb.load_images()[0].getpixel((4, 4))[1] > 150
    assert errors_of(out)[0]["reason"] == "bad_level" and errors_of(out)[0]["row"] == 3
    # the folder holds train and val: one at a time
    with pytest.raises(ConvertError, match="pass --split"):
        convert("abl", grpo_dataset, tmp_path / "x.parquet", progress=False)
    assert convert("abl", grpo_dataset, tmp_path / "val.parquet", split="val", progress=False).converted == 1
    # the data root may also be given explicitly
    moved = tmp_path / "train.jsonl"
    moved.write_bytes((grpo_dataset / "train.jsonl").read_bytes())
    assert convert("abl", moved, tmp_path / "m.parquet", image_dir=grpo_dataset, progress=False).converted == 2


def test_aqua_points_the_grpo_file_to_abl(grpo_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(NothingConverted, match="convert it with --from abl"):
        convert("aqua", grpo_dataset / "train.jsonl", tmp_path / "a.parquet",
                columns={"response": "answer"}, progress=False)


# ---------------------------------------------------------------------------- CarePilot

def nested(action: str, target: str, stm: str = "", ltm: str = "") -> str:
    return json.dumps({"Predicted": {"predicted_action": {"action": action, "target": target},
                                     "short_term_memory": stm, "long_term_memory": ltm}})


@pytest.fixture
def care_csv(tmp_path: Path) -> Path:
    root = tmp_path / "carepilot"
    (root / "images").mkdir(parents=True)
    for k in range(1, 7):
        (root / "images" / f"s{k}.png").write_bytes(image_bytes((40 * k, 0, 0)))
    rows = [
        ["T1", "1", "s1", "Segment the liver", '{"panels": ["Data", "Segment Editor"]}', "", "",
         nested("CLICK", "Segment Editor", "opened", "liver task")],
        ["T1", "2", "s2", "Segment the liver", '{"panels": ["Data",', "opened", "liver task",  # broken Grounding
         nested("SCROLL", "axial view")],
        ["T1", "3", "s3", "Segment the liver", "Slice view", "scrolled", "liver task",
         json.dumps({"action": {"type": "type", "target": "Name field"}})],
        ["T2", "1", "s4", "Rename", "", '["a", ', "", nested("CLICK", "Rename tool")],  # broken memory cell
        ["T2", "2", "s5", "Rename", "", "", "", json.dumps({"step": {"reason": "no action here"}})],
        ["T2", "3", "s6", "Rename", "", "", "", "```json\n" + nested("COMPLETE", "") + "\n```"],
    ]
    return write_care_csv(root / "train.csv", rows)


def test_find_action_wherever_it_nests() -> None:
    assert find_action(json.loads(nested("click", "OK"))) == ("CLICK", "OK")
    assert find_action({"action": {"type": "zoom", "target": "axial"}}) == ("ZOOM", "axial")
    assert find_action({"steps": [{"note": "x"}, {"Action_Type": "SCROLL", "element": {"id": 3}}]}) == (
        "SCROLL", '{"id": 3}')
    assert find_action({"a": {"b": 1}}) == (None, None)
    with pytest.raises(BadSample, match="missing_action|no action"):
        parse_output('{"a": 1}')
    with pytest.raises(BadSample) as err:
        parse_output('{"action": "CLICK",,}')
    assert err.value.reason == "malformed_json"


def test_carepilot_nested_output_bad_cells_and_data_actions(care_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "care.parquet"
    res = convert("carepilot", care_csv, out, image_dir=care_csv.parent / "images", progress=False)
    assert (res.converted, res.skipped) == (3, 3)
    first, typed, done = read_back(out)
    assert (first.meta["gold_action"], first.meta["gold_target"]) == ("CLICK", "Segment Editor")
    assert (typed.meta["gold_action"], typed.meta["gold_target"]) == ("TYPE", "Name field")
    assert (done.meta["gold_action"], done.meta["gold_target"]) == ("COMPLETE", "")
    assert text_of(done.messages[1]) == nested("COMPLETE", "")  # the fence is not trained on
    actions = ["CLICK", "COMPLETE", "SCROLL", "TYPE"]  # every readable gold action, sorted
    assert first.meta["actions"] == actions
    prompt = text_of(first.messages[0])
    assert "choose the next action from: CLICK, COMPLETE, SCROLL, TYPE." in prompt
    assert prompt == build_prompt("Segment the liver", '{"panels": ["Data", "Segment Editor"]}', "", "",
                                  actions=actions)
    rows = {e["row"]: (e["reason"], e["detail"]) for e in errors_of(out)}
    assert rows[3][0] == "malformed_json" and "'Grounding'" in rows[3][1]  # spreadsheet row: header is 1
    assert rows[5][0] == "malformed_json" and "'Short_Term_Memory'" in rows[5][1]
    assert rows[6][0] == "missing_action"
    assert set(rows) == {3, 5, 6}


def test_carepilot_explicit_actions_and_drop(care_csv: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "care.parquet"
    argv = ["--from", "carepilot", str(care_csv), str(out), "--image-dir", str(care_csv.parent / "images"),
            "--actions", "click,scroll,complete", "--drop", "grounding", "--no-progress"]
    assert run_cli(argv) == 0
    # the broken Grounding is dropped from the prompt, so its row converts; TYPE is not offered
    samples = read_back(out)
    assert [s.meta["gold_action"] for s in samples] == ["CLICK", "SCROLL", "COMPLETE"]
    assert "from: CLICK, SCROLL, COMPLETE." in text_of(samples[0].messages[0])
    reasons = {e["row"]: e["reason"] for e in errors_of(out)}
    assert reasons == {4: "unknown_action", 5: "malformed_json", 6: "missing_action"}


def test_converter_and_agent_agree_on_gold_and_prompt(care_csv: Path, tmp_path: Path) -> None:
    shots = care_csv.parent / "images"
    convert("carepilot", care_csv, tmp_path / "care.parquet", image_dir=shots, progress=False)
    converted = {(s.meta["task_id"], s.meta["step"]): s for s in read_back(tmp_path / "care.parquet")}
    data = read_tasks(care_csv, shots)
    steps = {(s.task_id, s.step): s for task in data.tasks.values() for s in task}
    assert data.gold_actions == ("CLICK", "COMPLETE", "SCROLL", "TYPE")
    for key, sample in converted.items():
        assert (steps[key].gold_action, steps[key].gold_target) == (sample.meta["gold_action"],
                                                                    sample.meta["gold_target"])
    assert (steps[("T1", 2)].gold_action, steps[("T2", 1)].gold_action) == ("SCROLL", "CLICK")
    assert steps[("T2", 2)].gold_action is None
    # the agent shows the converter's prompt, action list included, and reports what it could not use
    shown: list[str] = []

    def generate(sample) -> str:
        shown.append(sample.messages[0]["content"][1]["text"])
        return nested("CLICK", "Segment Editor", "m", "l")

    metrics = run_agent(None, care_csv, tmp_path / "agent", image_dir=shots, agent=Agent(generate))
    assert shown[0] == text_of(converted[("T1", 1)].messages[0])
    assert metrics["run"]["actions"] == ["CLICK", "COMPLETE", "SCROLL", "TYPE"]
    with (tmp_path / "agent" / "predictions.csv").open(newline="", encoding="utf-8") as f:
        preds = list(csv.DictReader(f))
    status = {(r["Task_id"], r["Slide_number"]): r["status"] for r in preds}
    assert status[("T1", "2")] == "malformed_json"  # its Grounding would reach the prompt: not run
    assert status[("T2", "1")] == "malformed_json"  # first step: its memory cell is shown
    assert status[("T1", "1")] == status[("T1", "3")] == status[("T2", "2")] == "ok"
    assert metrics["action_accuracy"] == pytest.approx(1 / 6) and metrics["gold_unparsed"] == 1
    assert metrics["bad_rows_by_reason"] == {"missing_action": 1}


def test_agent_needs_an_action_list(tmp_path: Path) -> None:
    (tmp_path / "s1.png").write_bytes(image_bytes(RED))
    path = write_care_csv(tmp_path / "unlabeled.csv", [["T1", "1", "s1", "Open the editor", "", "", "", ""]])
    agent = Agent(lambda sample: '{"action": "CLICK", "target": "Editor"}')
    with pytest.raises(ValueError, match="no action list"):
        agent.predict_step(tmp_path / "s1.png", "Open the editor")
    with pytest.raises(ValueError, match="pass --actions"):
        run_agent(None, path, tmp_path / "out", agent=agent)
    metrics = run_agent(None, path, tmp_path / "out", agent=agent, actions=["click", "complete"])
    assert metrics["run"]["actions"] == ["CLICK", "COMPLETE"] and metrics["bad_rows"] == 0
    assert metrics["gold_unparsed"] == 1 and metrics["status_counts"] == {"no_memory": 1}
