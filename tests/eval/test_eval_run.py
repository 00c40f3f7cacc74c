"""``vlmtune eval`` end to end on tiny models: outputs, adapters, batched == one-at-a-time
greedy generation, and clear errors for bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from vlmtune.config import ConfigError
from vlmtune.data.builtin import make_shapes_dataset
from vlmtune.data.readers import read_samples
from vlmtune.data.report import DataError
from vlmtune.data.sample import Sample
from vlmtune.eval.run import add_eval_args, main, run_eval
from vlmtune.registry import TASKS
from vlmtune.models.loading import ModelLoadError, load_for_inference
from vlmtune.rollout.generator import SamplingParams, first_texts
from vlmtune.rollout.hf import HFGenerator

OUTPUTS = ("predictions.jsonl", "predictions.csv", "metrics.json", "report/index.html")


@pytest.fixture(scope="module")
def shapes_eval(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(out, n=1, seed=0, eval_n=6)
    return out / "eval.jsonl"


def _outputs(out: Path) -> tuple[list[dict], list[dict], dict, str]:
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as f:
        flat = list(csv.DictReader(f))
    return rows, flat, json.loads((out / "metrics.json").read_text()), (out / "report/index.html").read_text()


def test_eval_generic_writes_all_outputs(tmp_path, tiny_model_dir, shapes_eval):
    metrics = run_eval(tiny_model_dir("qwen2_vl"), shapes_eval, task="generic", out_dir=tmp_path,
                       batch_size=4, max_new_tokens=6, show_progress=False)
    rows, flat, saved, html = _outputs(tmp_path)
    assert len(rows) == len(flat) == saved["n"] == saved["run"]["n_samples"] == 6
    assert html.count('class="card ') == 6 and html.count("data:image/png;base64,") == 6
    assert saved == json.loads(json.dumps(metrics, default=str))
    for key in ("exact_match", "token_f1", "rouge1", "rouge_l"):
        assert 0.0 <= saved[key] <= 1.0
    for row, line in zip(rows, flat):
        assert {"id", "question", "image", "gold", "response", "pred", "correct", "verdicts"} <= set(row)
        assert row["id"] == line["id"] and Path(row["image"]).is_file()
        assert row["gold"] in ("red.", "green.", "blue.", "yellow.") or row["gold"].startswith("A ")
        assert "verdicts.exact_match" in line
    assert saved["run"]["is_adapter"] is False and saved["run"]["skipped_rows"] == 0


def test_eval_adapter_dir(tmp_path, tiny_model_dir, shapes_eval):
    from peft import LoraConfig, get_peft_model

    base = tiny_model_dir("qwen2_vl")
    loaded = load_for_inference(base)
    peft_model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=loaded.family.lora_targets,
                                                         init_lora_weights=False, task_type="CAUSAL_LM"))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()

    metrics = run_eval(adapter, shapes_eval, out_dir=tmp_path / "out", batch_size=3, max_new_tokens=4,
                       limit=3, show_progress=False)
    assert metrics["run"]["is_adapter"] is True and metrics["n"] == 3
    # the base may also be given explicitly
    metrics = run_eval(adapter, shapes_eval, out_dir=tmp_path / "out2", base_model=str(base), batch_size=3,
                       max_new_tokens=4, limit=3, show_progress=False)
    assert metrics["run"]["base_model"] == str(base)
    rows, flat, _, _ = _outputs(tmp_path / "out2")
    assert len(rows) == len(flat) == 3


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_batched_equals_one_at_a_time(tiny_model_dir, shapes_eval, family):
    samples, _ = read_samples(shapes_eval, require_assistant=False)
    # prompts of different lengths (two question kinds + a longer one) and one text-only sample
    samples[1] = Sample(messages=[{"role": "user", "content": [{"type": "image"}, {
        "type": "text", "text": "Look closely at the picture and tell me: what colour is the shape?"}]}],
        images=samples[1].images, meta={"id": "long"})
    samples.append(Sample(messages=[{"role": "user", "content": "Say something."}], meta={"id": "text"}))
    loaded = load_for_inference(tiny_model_dir(family))
    params = SamplingParams(max_new_tokens=8, do_sample=False)
    system = "You are a careful assistant."
    single = first_texts(HFGenerator(loaded.model, loaded.processor, system_prompt=system, batch_size=1
                                     ).generate(samples, params))
    done = []
    batched = HFGenerator(loaded.model, loaded.processor, system_prompt=system, batch_size=4).generate(
        samples, params, on_batch=done.append)
    assert first_texts(batched) == single
    assert sum(done) == len(samples) and len(done) == 2
    enc = HFGenerator(loaded.model, loaded.processor).encode(samples[:3])
    assert (enc["attention_mask"][:, -1] == 1).all() and (enc["attention_mask"][:, 0] == 0).any()  # left-padded


def test_missing_model_dir(tmp_path, shapes_eval):
    with pytest.raises(ModelLoadError, match="model path does not exist: .*nope"):
        run_eval(tmp_path / "nope", shapes_eval, out_dir=tmp_path / "out", show_progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="holds no model"):
        run_eval(empty, shapes_eval, out_dir=tmp_path / "out", show_progress=False)


def test_missing_data_file(tmp_path, tiny_model_dir):
    with pytest.raises(DataError, match="missing.jsonl: no such file"):
        run_eval(tiny_model_dir("qwen2_vl"), tmp_path / "missing.jsonl", out_dir=tmp_path / "out",
                 show_progress=False)
    assert not (tmp_path / "out").exists()


def test_unknown_task_lists_tasks(tmp_path, tiny_model_dir, shapes_eval):
    with pytest.raises(ConfigError) as err:
        run_eval(tiny_model_dir("qwen2_vl"), shapes_eval, task="vqa", out_dir=tmp_path, show_progress=False)
    for name in TASKS:
        assert name in str(err.value)


def test_cli_entry_errors_are_clean(tmp_path, shapes_eval, capsys):
    rc = main(["--model", str(tmp_path / "nope"), "--data", str(shapes_eval), "--out", str(tmp_path / "o")])
    assert rc == 2 and "vlmtune eval: error: model path does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse lists the built-in tasks
        main(["--model", "m", "--data", "d", "--out", "o", "--task", "vqa"])
    err = capsys.readouterr().err
    assert "argument --task: unknown task 'vqa'" in err and "clarify" in err and "generic" in err


def test_eval_args_parse():
    import argparse

    p = argparse.ArgumentParser()
    add_eval_args(p)
    a = p.parse_args(["--model", "M", "--data", "D", "--task", "clarify", "--out", "O", "--base-model", "B",
                      "--batch-size", "2", "--max-new-tokens", "9", "--limit", "5"])
    assert (a.model, a.data, a.task, a.out, a.base_model, a.batch_size, a.max_new_tokens, a.limit) == \
        ("M", "D", "clarify", "O", "B", 2, 9, 5)


def test_generic_task_scores_against_final_assistant_turn():
    from vlmtune.eval.tasks import get_task

    s = Sample(messages=[{"role": "user", "content": "Colour?"}, {"role": "assistant", "content": "red."}])
    no_ref = Sample(messages=[{"role": "user", "content": "Colour?"}])
    records, agg = get_task("generic").score([s, s, no_ref], ["Red", "dark red", "x"])
    assert [r["correct"] for r in records] == [True, False, None]
    assert records[1]["token_f1"] == pytest.approx(2 / 3)
    assert agg["exact_match"] == 0.5 and agg["n_scored"] == 2 and agg["n_without_reference"] == 1


def test_eval_takes_a_recipe_and_flags_are_shorthands(tmp_path, tiny_model_dir, shapes_eval, capsys):
    """The recipe's eval.task, eval.max_new_tokens, data.* and generation.* apply; a flag sets its
    key over the recipe's value; a dotted override wins over both; the resolved recipe is saved."""
    import yaml

    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_model_dir("qwen2_vl"))}, "data": {"eval_path": str(shapes_eval), "limit": 4},
        "eval": {"task": "mcq", "max_new_tokens": 3}, "generation": {"batch_size": 2},
        "output": {"dir": str(tmp_path / "run")}}))
    assert main([str(recipe), "--no-progress"]) == 0
    saved = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["run"]
    assert (saved["task"], saved["max_new_tokens"], saved["n_samples"], saved["batch_size"]) == ("mcq", 3, 4, 2)
    assert "config.yaml" in capsys.readouterr().out

    out = tmp_path / "flags"
    assert main([str(recipe), "eval.max_new_tokens=5", "--max-new-tokens", "4", "--task", "generic",
                 "--out", str(out), "--no-progress"]) == 0
    saved = json.loads((out / "metrics.json").read_text())["run"]
    assert (saved["task"], saved["max_new_tokens"]) == ("generic", 5)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["eval"]["task"] == "generic" and resolved["eval"]["out"] == str(out)


def test_eval_without_model_or_data_says_which_key(tmp_path, shapes_eval, capsys):
    assert main(["--data", str(shapes_eval), "--out", str(tmp_path)]) == 2
    assert "needs a model: --model DIR (model.path=DIR)" in capsys.readouterr().err
    assert main(["model.path=m", "--out", str(tmp_path)]) == 2
    assert "needs data: --data FILE (data.eval_path=FILE)" in capsys.readouterr().err


def test_judge_flag_maps_onto_recipe_keys(tmp_path):
    from vlmtune.eval.run import judge_flag

    assert judge_flag("rule") == {"eval.judge": "rule"}
    assert judge_flag("http://127.0.0.1:9/v1") == {"eval.judge": "http", "judge.base_url": "http://127.0.0.1:9/v1"}
    (tmp_path / "j.yaml").write_text("judge: {base_url: 'http://h:1/v1', model: m}\n")
    mapped = judge_flag(str(tmp_path / "j.yaml"))
    assert mapped["eval.judge"] == "http" and mapped["judge"]["model"] == "m"
