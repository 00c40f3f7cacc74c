"""The GRPO engine end to end on a tiny model: learning signal, every loss variant with and
without a KL reference, exact resume, dynamic sampling, and a dead judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmtune.config import load_recipe
from vlmtune.data.builtin import make_shapes_dataset
from vlmtune.train.grpo import run_grpo

REWARDS = '''
def digit_share(prompts, completions, **columns):
    """Dense toy reward: the share of characters that are digits."""
    out = []
    for c in completions:
        text = c[0]["content"] if isinstance(c, list) else c
        out.append(sum(ch.isdigit() for ch in text) / max(len(text), 1))
    return out


def constant(prompts, completions, **columns):
    return [0.5] * len(completions)


def half_none(prompts, completions, **columns):
    return [None if i % 2 else 1.0 for i in range(len(completions))]
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("grpo")
    data = make_shapes_dataset(root / "shapes", n=8, seed=0)
    rewards = root / "toy_rewards.py"
    rewards.write_text(REWARDS)
    return tiny_model_dir("qwen2_vl"), data, rewards


def recipe(setup, out: Path, *overrides: str):
    model, data, rewards = setup
    return load_recipe(None, [
        f"model.path={model}", f"data.train_path={data}", f"output.dir={out}",
        f"rewards=[{{fn: '{rewards}:digit_share'}}]", "grpo.num_generations=4", "grpo.prompts_per_step=2",
        "grpo.max_new_tokens=8", "train.lr=5e-3", "train.scheduler=constant", *overrides])


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_mean_reward_rises(setup, tmp_path):
    # top-k 50 (transformers' default, which generation used before sampling had its own key):
    # on a random tiny model the full vocabulary gives the digit reward too little signal in 30 steps
    run_grpo(recipe(setup, tmp_path / "run", "train.mode=full", "train.max_steps=30", "train.lr=3e-3",
                    "grpo.top_k=50"), show_progress=False)
    rewards = [m["reward_mean"] for m in metrics(tmp_path / "run")]
    first, last = sum(rewards[:8]) / 8, sum(rewards[-8:]) / 8
    assert last > first + 0.2, (first, last, rewards)


VARIANTS = [(loss, "lora", 0.04) for loss in ("grpo", "dr_grpo", "dapo", "gspo")] + [
    ("grpo", "full", 0.04),  # reference = a frozen copy
    ("grpo", "lora", 0.0),  # no reference loaded at all
    ("grpo", "qlora", 0.04),  # 4-bit base; reference = base with adapters disabled
]


@pytest.mark.parametrize("loss,mode,beta", VARIANTS)
def test_every_variant_runs_and_logs(loss, mode, beta, setup, tmp_path):
    r = recipe(setup, tmp_path / "run", f"train.mode={mode}", f"grpo.loss={loss}", f"grpo.beta={beta}",
               "grpo.num_iterations=2", "train.max_steps=2", "grpo.eps_high=0.28")
    summary = run_grpo(r, show_progress=False)
    rows = metrics(tmp_path / "run")
    assert summary["steps"] == 2 and len(rows) == 2
    for row in rows:
        assert row["reward_mean"] is not None and "reward/digit_share" in row
        assert "time/gen" in row and "time/update" in row and "entropy" in row
        assert ("kl" in row) == (beta > 0)
        if beta > 0:
            assert row["kl"] >= 0
        assert len(row["samples"]) == 4 and {"completion", "reward"} <= set(row["samples"][0])
    final = tmp_path / "run" / "final"
    assert (final / ("config.json" if mode == "full" else "adapter_config.json")).is_file()


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "adapter_model.safetensors"))


def test_exact_resume(setup, tmp_path):
    common = ("train.max_steps=4", "train.save_every=2", "train.keep_last=5", "grpo.num_iterations=2")
    run_grpo(recipe(setup, tmp_path / "straight", *common), show_progress=False)
    run_grpo(recipe(setup, tmp_path / "cut", *common[:-1], "grpo.num_iterations=2", "train.max_steps=4"),
             show_progress=False)
    # Throw away the end of the second run and resume it from step 2.
    import shutil

    for name in ("final", "checkpoints/step-4"):
        shutil.rmtree(tmp_path / "cut" / name)
    summary = run_grpo(recipe(setup, tmp_path / "cut", *common, "resume_from=auto"), show_progress=False)
    a, b = _adapter(tmp_path / "straight"), _adapter(tmp_path / "cut")
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise: generation is replayed from the saved RNG
    assert [m["step"] for m in metrics(tmp_path / "cut")] == [1, 2, 3, 4], "steps 3-4 of the first run dropped"
    ra = [m["reward_mean"] for m in metrics(tmp_path / "straight")]
    rb = [m["reward_mean"] for m in metrics(tmp_path / "cut")]
    assert ra == pytest.approx(rb, abs=1e-6)
    straight = json.loads((tmp_path / "straight" / "run_summary.json").read_text())["compute"]
    for key in ("train_tokens", "forward_tokens", "flops_estimate"):
        assert summary["compute"][key] == straight[key] > 0, key  # steps 1-2 come from the checkpoint


def test_dynamic_sampling_drops_flat_groups(setup, tmp_path):
    _, _, rewards = setup
    r = recipe(setup, tmp_path / "run", f"rewards=[{{fn: '{rewards}:constant'}}]", "grpo.drop_zero_spread=true",
               "grpo.max_refill=1", "train.max_steps=2")
    run_grpo(r, show_progress=False)
    for row in metrics(tmp_path / "run"):
        assert row["groups_zero_spread"] == 4 and row["groups_dropped"] == 4  # 2 groups + 2 refilled
        assert row["reward_mean"] is None  # nothing left to learn from, and it says so


def test_none_rewards_are_excluded(setup, tmp_path):
    _, _, rewards = setup
    r = recipe(setup, tmp_path / "run", f"rewards=[{{fn: '{rewards}:half_none'}}]", "train.max_steps=1")
    run_grpo(r, show_progress=False)
    row = metrics(tmp_path / "run")[0]
    assert row["rewards_none_frac"] == 0.5 and row["reward_mean"] == 1.0


def levelled(data: Path, tmp_path: Path) -> Path:
    """The shapes prompts with the columns the aqua reward needs (gold level and facts)."""
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    for row in rows:
        row["meta"].update({"level": "L0", "facts": {"true": ["the shape is red"]}})
        row["images"] = [str((data.parent / i).resolve()) for i in row["images"]]
    out = tmp_path / "with_levels.jsonl"
    out.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return out


def test_dead_judge_is_counted_not_silent(setup, tmp_path, free_port):
    r = recipe(setup, tmp_path / "run", "rewards=[{fn: aqua}]", f"judge.base_url=http://127.0.0.1:{free_port()}/v1",
               "judge.retries=1", "judge.backoff_s=0", "judge.timeout_s=2", "train.max_steps=1")
    r.data.train_path = str(levelled(setup[1], tmp_path))
    summary = run_grpo(r, show_progress=False)
    row = metrics(tmp_path / "run")[0]
    assert row["rewards_none_frac"] == 1.0 and row["reward_mean"] is None
    assert row["judge/fail_connection"] > 0 and not [k for k in row if k.startswith("judge/judge/")]
    assert summary["judge"]["fail_connection"] > 0


def test_bad_prompt_rows_are_skipped_and_reported(setup, tmp_path):
    _, data, _ = setup
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    for row in rows:
        row["images"] = [str((data.parent / i).resolve()) for i in row["images"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]) + '{"messages": [oops\n')
    r = recipe(setup, tmp_path / "run", "train.max_steps=1")
    r.data.train_path = str(bad)
    summary = run_grpo(r, show_progress=False)
    assert summary["prompts"] == 4 and summary["skipped_rows"] == {"malformed_json": 1}
    reported = [json.loads(x) for x in (tmp_path / "run" / "skipped_rows.jsonl").read_text().splitlines()]
    assert [(r["row"], r["reason"]) for r in reported] == [(5, "malformed_json")]
    assert reported[0]["file"].endswith("bad.jsonl")


def test_recipe_errors_are_clear(setup, tmp_path):
    from vlmtune.config import ConfigError

    with pytest.raises(ConfigError, match="grad_accum does not apply"):
        run_grpo(recipe(setup, tmp_path / "a", "train.grad_accum=4"), show_progress=False)
    with pytest.raises(ConfigError, match="at least one entry under 'rewards'"):
        run_grpo(recipe(setup, tmp_path / "b", "rewards=[]"), show_progress=False)


def test_judge_abort_stops_the_cli_with_a_clear_message(setup, tmp_path, free_port):
    import subprocess
    import sys

    model, data, _ = setup
    data2 = levelled(data, tmp_path)
    proc = subprocess.run([str(Path(sys.executable).parent / "vlmtune"), "grpo", f"model.path={model}",
                           f"data.train_path={data2}", f"output.dir={tmp_path / 'run'}", "rewards=[{fn: aqua}]",
                           f"judge.base_url=http://127.0.0.1:{free_port()}/v1", "judge.on_failure=abort",
                           "judge.abort_after=2", "judge.retries=0", "judge.timeout_s=2", "train.max_steps=2",
                           "grpo.max_new_tokens=4", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "judge failed 2 times in a row" in proc.stderr and "Traceback" not in proc.stderr


def test_rewards_get_trl_style_columns(setup, tmp_path):
    _, data, _ = setup
    seen = tmp_path / "seen.json"
    probe = tmp_path / "probe.py"
    probe.write_text(f"""import json
def probe(prompts, completions, completion_ids, answer, **columns):
    json.dump({{"prompt_roles": [m["role"] for m in prompts[0]], "completion": completions[0],
               "ids": completion_ids[0], "answer": answer, "columns": sorted(columns)}}, open({str(seen)!r}, "w"))
    return [0.0] * len(completions)
""")
    run_grpo(recipe(setup, tmp_path / "run", f"rewards=[{{fn: '{probe}:probe'}}]", "train.max_steps=1"),
             show_progress=False)
    got = json.loads(seen.read_text())
    assert got["prompt_roles"] == ["user"]  # the reference answer is not part of the prompt
    assert got["completion"][0]["role"] == "assistant" and isinstance(got["completion"][0]["content"], str)
    assert got["ids"] and all(isinstance(i, int) for i in got["ids"]) and len(got["ids"]) <= 8
    assert len(got["answer"]) == 8 and {"shape", "colour"} <= set(got["columns"])  # 2 prompts x G=4


def test_reward_components_spread_and_step_hook(setup, tmp_path):
    """A reward's numeric log_extra columns get their within-group spread logged; on_step's
    metrics are logged with the step it ran after."""
    parts = tmp_path / "parts.py"
    parts.write_text('''
def parts(prompts, completions, log_extra, **columns):
    odd = [float(len(c[0]["content"]) % 2) for c in completions]
    log_extra("part/odd", odd)
    log_extra("part/one", [1.0] * len(completions))
    log_extra("label", ["text"] * len(completions))  # not a number: no spread
    return [o + 1.0 for o in odd]
''')
    calls = []

    def hook(step, policy):
        calls.append((step, policy.training))
        return {"hook/step": float(step)} if step % 2 == 0 else None

    run_grpo(recipe(setup, tmp_path / "run", f"rewards=[{{fn: '{parts}:parts'}}]", "train.max_steps=2",
                    "train.log_every=1"), show_progress=False, on_step=hook)
    rows = metrics(tmp_path / "run")
    assert [c[0] for c in calls] == [1, 2]
    assert "hook/step" not in rows[0] and rows[1]["hook/step"] == 2.0 and rows[1]["time/on_step"] >= 0
    for row in rows:
        assert row["spread/part/one"] == 0.0 and "spread/label" not in row
        assert row["spread/part/odd"] == pytest.approx(row["spread/reward"])  # the reward is odd + 1
        assert {s["label"] for s in row["samples"]} == {"text"}  # extras stay columns of the samples
