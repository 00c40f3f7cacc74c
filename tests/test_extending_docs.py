"""docs/extending.md's examples, read from the page and run: a task of one's own (eval on a
tiny model through the CLI, by file and by module; its demo hook), a reward of one's own in
a recipe, a data format of one's own through `vlmtune convert`, an RL loss and an advantage
scale of one's own (hand-computed values, then one GRPO step with both), an environment and a
multi-turn advantage estimator of one's own (`vlmtune env show`, `vlmtune rollout` with the
solver and with a model, one multi-turn GRPO step), and a generation backend of one's own
(`vlmtune eval` through a real `vlmtune serve` on loopback)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from vlmtune.cli import main
from vlmtune.data.builtin import make_shapes_dataset

DOC = Path(__file__).parents[1] / "docs" / "extending.md"

pytestmark = pytest.mark.timeout(600)


def doc_files() -> dict[str, str]:
    """The page's code blocks whose first line is ``# NAME.py`` / ``# NAME.yaml``, by NAME."""
    blocks = re.findall(r"```(?:python|yaml)\n# (\S+\.(?:py|yaml))\n(.*?)```", DOC.read_text(), re.S)
    return {name: body for name, body in blocks}


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """The examples written into a fresh working directory (the commands run from there)."""
    for name, body in doc_files().items():
        (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(out, n=4, seed=0, eval_n=6)
    return out


def test_the_page_has_every_example():
    assert {"my_task.py", "my_rewards.py", "grpo_my_reward.yaml", "my_format.py", "my_loss.py", "my_scale.py",
            "my_advantage.py", "my_env.py", "my_backend.py"} <= set(doc_files())


def test_own_task_by_file_through_eval_cli(workdir, shapes, tiny_model_dir, capsys):
    out = workdir / "eval-word"
    rc = main(["eval", "--model", str(tiny_model_dir("qwen2_vl")), "--data", str(shapes / "eval.jsonl"),
               "--task", "my_task.py:WordTask", "--out", str(out), "--max-new-tokens", "6", "--no-progress"])
    assert rc == 0
    console = capsys.readouterr().out
    assert '"accuracy"' in console and "Accuracy by question" in console
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "word" and metrics["run"]["task"] == "my_task.py:WordTask"
    assert metrics["n"] == 6 and 0.0 <= metrics["accuracy"] <= 1.0
    assert sum(g["n"] for g in metrics["per_question"].values()) == 6
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in rows] == [r["gold"].lower() in r["response"].lower() for r in rows]
    html = (out / "report" / "index.html").read_text()
    assert 'id="metrics-table"' in html and "<h2>Accuracy by question</h2>" in html
    assert "<td>accuracy</td>" in html and html.count('class="bar"') >= 1 and html.count('class="card ') == 6


def test_own_task_by_module(workdir, monkeypatch):
    from vlmtune.data.sample import Sample
    from vlmtune.eval.tasks import get_task

    monkeypatch.syspath_prepend(str(workdir))
    task = get_task("my_task:WordTask")
    s = Sample(messages=[{"role": "user", "content": "Colour?"}], meta={"answer": "red", "question": "colour"})
    records, metrics = task.score([s, s], ["It is red.", "blue"])
    assert [r["correct"] for r in records] == [True, False]
    assert metrics["accuracy"] == 0.5 and metrics["per_question"] == {"colour": {"n": 2, "accuracy": 0.5}}


def test_own_task_demo_hook_with_an_option(workdir, tiny_model_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(workdir))
    rc = main(["demo", "--task", "my_task:WordTask", "--fast", "--set", f"model={tiny_model_dir('qwen2_vl')}",
               "--out", str(workdir / "demo-word")])
    assert rc == 0
    metrics = json.loads((workdir / "demo-word" / "eval" / "metrics.json").read_text())
    assert metrics["task"] == "word" and metrics["n"] == 4


def test_own_reward_in_a_recipe(workdir, shapes):
    from vlmtune.config import load_recipe
    from vlmtune.data.readers import read_samples
    from vlmtune.rewards.registry import RewardSet

    recipe = load_recipe(workdir / "grpo_my_reward.yaml", [f"data.train_path={shapes / 'train.jsonl'}"])
    rewards = RewardSet(recipe.rewards, judge=recipe.judge)
    samples, _ = read_samples(shapes / "train.jsonl")
    columns = {k: [s.meta.get(k) for s in samples] for k in samples[0].meta}
    rewards.check_columns([*columns, "images"])
    replies = [[{"role": "assistant", "content": f"It is {s.meta['colour']}."}] for s in samples[:2]] + \
              [[{"role": "assistant", "content": "No idea."}] for _ in samples[2:]]
    per_fn, _, means = rewards.score(None, replies, columns)
    assert rewards.names == ["names_colour", "length_penalty"]
    assert per_fn[:, 0].tolist() == [1.0, 1.0] + [0.0] * (len(samples) - 2)


def _png(path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def test_own_data_format_through_convert_cli(workdir, capsys):
    from vlmtune.data.readers import read_samples

    _png(workdir / "red.png")
    with (workdir / "qa.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "prompt", "answer"])
        w.writerow(["red.png", "What colour?", "red"])
        w.writerow(["gone.png", "What colour?", "blue"])  # missing image: skipped, counted
        w.writerow(["red.png", "Describe it.", "x" * 300])  # the format's own check
    out = workdir / "qa.parquet"
    rc = main(["convert", "--from", "my_format.py:FORMAT", "qa.csv", str(out), "--column", "question=prompt",
               "--no-progress"])
    assert rc == 0 and "converted 1 rows, skipped 2 rows" in capsys.readouterr().out
    samples, bad = read_samples(out)
    assert len(samples) == 1 and bad.total == 0 and samples[0].meta["answer"] == "red"
    errors = [json.loads(x) for x in (workdir / "qa.errors.jsonl").read_text().splitlines()]
    assert {(e["row"], e["reason"]) for e in errors} == {(3, "missing_image"), (4, "bad_answer")}  # CSV lines

    rc = main(["convert", "--from", "my_format.py:FORMT", "qa.csv", str(out), "--no-progress"])
    assert rc == 2 and "has no attribute 'FORMT'. Did you mean 'FORMAT'" in capsys.readouterr().err
    rc = main(["convert", "--from", "my_format.py:COLUMNS", "qa.csv", str(out), "--no-progress"])
    assert rc == 2 and "is a dict, not a vlmtune.data.converters.Converter" in capsys.readouterr().err


def test_own_loss_and_scale_by_hand(workdir):
    import torch

    from vlmtune.train.advantages import group_advantages
    from vlmtune.train.losses import policy_loss

    # ratio 1 (logp = old): per-token loss -A; sums -1 * 2 and +1 * 3, mean over completions
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss, _ = policy_loss("my_loss.py:SEQ_MEAN_TOKEN_SUM", logp, logp, torch.tensor([1.0, -1.0]), mask)
    assert float(loss) == pytest.approx(0.5)
    adv = group_advantages(torch.tensor([0.0, 1.0, 3.0, 3.0]), 2, scale="my_scale.py:max_abs")
    assert adv.tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0], abs=1e-3)  # a flat group: 0 / eps
    nan = group_advantages(torch.tensor([0.0, float("nan"), 2.0, 4.0]), 2, scale="my_scale.py:max_abs")
    assert nan[:2].tolist() == [0.0, 0.0] and nan[2:].abs().max() <= 1.0


def test_own_loss_and_scale_in_a_grpo_run(workdir, shapes, tiny_model_dir):
    out = workdir / "grpo-mine"
    rc = main(["grpo", "grpo_my_reward.yaml", "grpo.loss=my_loss.py:SEQ_MEAN_TOKEN_SUM",
               "grpo.scale=my_scale.py:max_abs",
               f"model.path={tiny_model_dir('qwen2_vl')}", f"data.train_path={shapes / 'train.jsonl'}",
               "data.val_split=0", f"output.dir={out}", "output.report_to=[]", "--no-progress"])
    assert rc == 0
    (step,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert step["adv_abs_mean"] <= 1.0 and step["loss"] == step["loss"]  # bounded advantages, a finite loss
    assert main(["grpo", "grpo_my_reward.yaml", "grpo.scale=grop", f"output.dir={out}-x"]) == 2


def test_own_environment_through_env_and_rollout(workdir, tiny_model_dir, capsys):
    assert main(["env", "show", "my_env.py:ColourEnv", str(workdir / "colour.png")]) == 0
    assert Image.open(workdir / "colour.png").size == (64, 64)
    assert main(["rollout", "--env", "my_env.py:ColourEnv", "--policy", "solver", "--episodes", "4",
                 "--out", "solver", "--no-progress"]) == 0
    assert json.loads((workdir / "solver" / "summary.json").read_text())["success_rate"] == 1.0
    assert main(["rollout", "--env", "my_env.py:ColourEnv", "--policy", str(tiny_model_dir("qwen2_vl")),
                 "--episodes", "4", "--group-size", "2", "--max-new-tokens", "4", "--out", "model",
                 "--no-progress"]) == 0
    summary = json.loads((workdir / "model" / "summary.json").read_text())
    assert summary["episodes"] == 4 and summary["failed_episodes"] == 0 and 4 <= summary["turns"] <= 12


def test_own_generation_backend_against_a_real_server(workdir, shapes, tiny_model_dir, monkeypatch):
    """Greedy eval through `vlmtune serve` and the page's ChatServer backend = the hf backend's."""
    from vlmtune.models.loading import load_for_inference
    from vlmtune.serve import create_app

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "serve"))
    from serve_helpers import running

    model = str(tiny_model_dir("qwen2_vl"))
    common = ["eval", "--model", model, "--data", str(shapes / "eval.jsonl"), "--max-new-tokens", "6",
              "--no-progress"]
    assert main([*common, "--out", "local"]) == 0
    with running(create_app(load_for_inference(model), "tiny")) as url:
        assert main([*common, "--out", "http", "generation.backend=my_backend.py:ChatServer",
                     f"generation.options={{base_url: '{url}/v1'}}"]) == 0

    def responses(out):
        return [json.loads(x)["response"] for x in (workdir / out / "predictions.jsonl").read_text().splitlines()]

    assert responses("http") == responses("local") and len(responses("local")) == 6


def test_own_multi_turn_advantage_by_hand(workdir):
    import torch

    from vlmtune.registry import ADVANTAGES

    rloo = ADVANTAGES.get("my_advantage.py:rloo")
    adv, groups = rloo(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2, torch.tensor([0, 0, 1, 2, 3]), torch.zeros(5),
                       ["a", "a", "a", "b", "b"])
    assert adv.tolist() == [1.0, 1.0, -1.0, 0.0, 0.0] and groups.shape == (5,)
    nan = float("nan")
    adv, _ = rloo(torch.tensor([1.0, nan, 2.0, 0.0, 1.0, 3.0, nan, 5.0, nan]), 3, torch.arange(9), torch.zeros(9),
                  list("abcdefghi"))
    # a broken episode (NaN) is left out of its group's baseline; a lone valid episode has none: 0
    assert adv.tolist() == [-1.0, 0.0, 1.0, -2.0, -0.5, 2.5, 0.0, 0.0, 0.0]


def test_own_environment_and_advantage_in_multi_turn_grpo(workdir, tiny_model_dir):
    out = workdir / "grpo-rloo"
    assert main(["grpo", "env.name=my_env.py:ColourEnv", "grpo.advantage=my_advantage.py:rloo",
                 f"model.path={tiny_model_dir('qwen2_vl')}", "train.max_steps=1", "grpo.num_generations=2",
                 "grpo.prompts_per_step=2", "grpo.max_new_tokens=4", f"output.dir={out}", "output.report_to=[]",
                 "--no-progress"]) == 0
    (step,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert 4 <= step["episode_turns_mean"] * 4 <= 12 and step["episodes_failed"] == 0
