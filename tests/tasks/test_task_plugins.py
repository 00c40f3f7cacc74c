"""Tasks and synthetic data sets as plugins: built-in names and ``file.py:Name`` /
``module:Name`` wherever a task or data set is named, and one-line errors for what cannot
work (no demo hook, an option the hook does not take, no score method, a malformed score)."""

from __future__ import annotations

import json

import pytest

from vlmtune.cli import main
from vlmtune.config import ConfigError, load_recipe
from vlmtune.eval.run import _scored
from vlmtune.eval.tasks import get_task, load_task
from vlmtune.registry import SYNTH, TASKS

ONLY_SCORE = '''
class Plain:
    name = "plain"

    def score(self, samples, responses):
        return [{"gold": None, "pred": r, "correct": None} for r in responses], {"n": len(responses)}


class NoScore:
    name = "noscore"


class WithDemo(Plain):
    def demo(self, out, *, fast=False, size=1):
        import json, pathlib
        pathlib.Path(out).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(out) / "demo.json").write_text(json.dumps({"fast": fast, "size": size}))
        return {"ok": True}


def make_numbers(out_dir, n, seed=0, image_size=8, eval_n=0):
    """One text-only sample per number."""
    import json, pathlib
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": [{"role": "user", "content": f"{i}+1?"}, {"role": "assistant", "content": str(i + 1)}]}
            for i in range(seed, seed + n)]
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
    return out / "train.jsonl"
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    (tmp_path / "plugins.py").write_text(ONLY_SCORE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_builtin_tasks_load_and_have_help():
    for name in TASKS.names():  # each scores (eval) or has a demo, or both
        task = load_task(name)
        assert task.name == name and TASKS.help(name)
        assert callable(getattr(task, "score", None)) or callable(getattr(task, "demo", None))
    assert load_task("clarify").demo  # the demo hook `vlmtune demo` runs
    assert "clarify (" in TASKS.describe_each() and "file.py:attr" in TASKS.describe_each()
    assert SYNTH.names() == ["clarify", "shapes"]


def test_task_judge_only_for_a_task_that_takes_one(plugins):
    assert get_task("clarify", judge="rule").judge == "rule"
    with pytest.raises(ConfigError, match="task 'mcq' uses no judge"):
        get_task("mcq", judge="rule")
    with pytest.raises(ConfigError, match="has no score"):
        get_task("plugins.py:NoScore")
    with pytest.raises(ConfigError, match=r"unknown task 'clarfy' \(did you mean 'clarify'\?\)"):
        get_task("clarfy")
    with pytest.raises(ConfigError, match="has no attribute 'Plian'. Did you mean 'Plain'"):
        get_task("plugins.py:Plian")


def test_eval_stops_before_the_model_for_a_task_without_score(plugins, capsys):
    rc = main(["eval", "--model", "no-such-model", "--data", "d.jsonl", "--task", "plugins.py:NoScore", "--out", "o"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "has no score(samples, responses) method" in err


def test_a_malformed_score_is_named():
    with pytest.raises(ConfigError, match=r"task 'x': score\(\) must return \(records"):
        _scored("x", [{"a": 1}], 1)
    with pytest.raises(ConfigError, match=r"returned 1 records for 2 prompts"):
        _scored("x", ([{"a": 1}], {}), 2)
    assert _scored("x", ([{"a": 1}], {"m": 1}), 1) == ([{"a": 1}], {"m": 1})


def test_recipe_eval_task_accepts_names_and_specs():
    assert load_recipe(None, ["eval.task=mcq"]).eval.task == "mcq"
    assert load_recipe(None, ["eval.task=plugins.py:Plain"]).eval.task == "plugins.py:Plain"
    with pytest.raises(ConfigError, match="did you mean 'clarify'"):
        load_recipe(None, ["eval.task=clarfy"])


def test_demo_hook_of_a_user_task(plugins):
    assert main(["demo", "--task", "plugins.py:WithDemo", "--fast", "--set", "size=3", "--out", "d"]) == 0
    assert json.loads((plugins / "d" / "demo.json").read_text()) == {"fast": True, "size": 3}


def test_demo_errors_are_one_line(plugins, capsys):
    assert main(["demo", "--task", "plugins.py:Plain", "--out", "d"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "task 'plugins.py:Plain' has no demo hook" in err and "clarify" in err
    assert main(["demo", "--task", "plugins.py:WithDemo", "--set", "colour=red", "--out", "d"]) == 2
    err = capsys.readouterr().err.strip()
    assert "demo of task 'plugins.py:WithDemo' takes no option 'colour'; its options: size" in err
    assert main(["demo", "--task", "plugins.py:WithDemo", "--prompt-variant", "1", "--out", "d"]) == 2
    assert "takes no option 'prompt_variant'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--task", "clarfy"])
    assert "unknown task 'clarfy' (did you mean 'clarify'?)" in capsys.readouterr().err


def test_synth_builtin_user_and_bad_option(plugins, capsys):
    assert main(["synth", "plugins.py:make_numbers", "nums", "--n", "3", "--seed", "5"]) == 0
    rows = [json.loads(x) for x in (plugins / "nums" / "train.jsonl").read_text().splitlines()]
    assert [r["messages"][1]["content"] for r in rows] == ["6", "7", "8"]
    assert main(["synth", "shapes", "s", "--n", "2", "--prompt-variant", "1"]) == 2
    assert "data set 'shapes' takes no option 'prompt_variant'" in capsys.readouterr().err
    assert main(["synth", "shapes", "s", "--n", "2", "--eval-n", "1"]) == 0
    assert (plugins / "s" / "train.jsonl").is_file() and (plugins / "s" / "eval.jsonl").is_file()
    paths = capsys.readouterr().out
    assert main(["synth", "clarify", "c", "--n", "4", "--eval-n", "0", "--prompt-variant", "1"]) == 0
    out = capsys.readouterr().out
    assert "train: " in out and "eval: " not in out and "wrote" in paths


def test_demo_takes_a_recipe(plugins):
    (plugins / "demo.yaml").write_text("demo: {task: plugins.py:WithDemo, out: from-recipe, options: {size: 2}}\n")
    assert main(["demo", "demo.yaml", "--fast"]) == 0
    assert json.loads((plugins / "from-recipe" / "demo.json").read_text()) == {"fast": True, "size": 2}
    assert main(["demo", "demo.yaml", "--set", "size=5", "demo.out=over"]) == 0
    assert json.loads((plugins / "over" / "demo.json").read_text()) == {"fast": False, "size": 5}
