"""`vlmtune demo --fast` (the clarify task's demo hook, run by the CLI without --task): the
whole pipeline runs and writes its public outputs.

The fast demo trains for a handful of steps, so its accuracies mean nothing; this test
checks the contract (summary.json schema, the comparison report), not the numbers. The
full demo's numbers are a slow test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

STAGES = ("baseline", "sft", "grpo")
LEVELS = ("L0", "L1", "L2", "L3")


def _check_stage(row: dict) -> None:
    assert set(row) >= {"strategic_accuracy", "per_level", "reward_mean"}
    assert isinstance(row["strategic_accuracy"], float) and 0.0 <= row["strategic_accuracy"] <= 1.0
    assert set(row["per_level"]) == set(LEVELS)
    for lv in LEVELS:
        v = row["per_level"][lv]
        assert isinstance(v, float) and 0.0 <= v <= 1.0, (lv, v)
    assert isinstance(row["reward_mean"], float) and 0.0 <= row["reward_mean"] <= 1.0
    assert math.isnan(row["answer_accuracy"]) or 0.0 <= row["answer_accuracy"] <= 1.0
    # overall = mean of the balanced levels
    assert math.isclose(row["strategic_accuracy"], sum(row["per_level"].values()) / 4, abs_tol=1e-9)


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from vlmtune.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--fast", "--out", str(out)]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_fast_demo_summary_schema(fast_demo: tuple[Path, dict]) -> None:
    out, summary = fast_demo
    for stage in STAGES:
        _check_stage(summary[stage])
    assert isinstance(summary["wall_seconds"], float) and summary["wall_seconds"] > 0
    assert summary["settings"]["fast"] is True
    # responses changed from the stage before, counted from the stages' own prediction files
    assert summary["baseline"]["changed"] is None
    for before, stage in (("baseline", "sft"), ("sft", "grpo")):
        old, new = ([json.loads(x) for x in (out / "eval" / s / "predictions.jsonl").read_text().splitlines()]
                    for s in (before, stage))
        assert summary[stage]["changed"] == sum(a["response"] != b["response"] for a, b in zip(old, new))
        assert 0 <= summary[stage]["changed"] <= len(new)


def test_changed_responses_counts_by_id() -> None:
    from vlmtune.tasks.clarify.demo import changed_responses

    before = [{"id": "a", "response": "The cup is red."}, {"id": "b", "response": "Which cup?"},
              {"id": "c", "response": ""}]
    after = [{"id": "c", "response": ""}, {"id": "b", "response": "Which cup? "},  # order differs
             {"id": "a", "response": "The cup is red."}]
    assert changed_responses(before, after) == 1  # only b; whitespace counts as a change
    assert changed_responses(before, before) == 0
    with pytest.raises(ValueError, match="different questions"):
        changed_responses(before, after[:2])


def test_fast_demo_grpo_starts_from_sft(fast_demo: tuple[Path, dict]) -> None:
    import yaml

    out, _ = fast_demo
    grpo_cfg = yaml.safe_load((out / "grpo" / "config.yaml").read_text())
    assert Path(grpo_cfg["model"]["path"]) == out / "sft" / "final"
    assert grpo_cfg["rewards"][0]["fn"] == "aqua"
    assert grpo_cfg["rewards"][0]["kwargs"] == {"judge": "rule"}
    assert (out / "grpo" / "final" / "model.safetensors").is_file()


def test_fast_demo_report_compares_stages(fast_demo: tuple[Path, dict]) -> None:
    out, _ = fast_demo
    page = out / "report" / "index.html"
    assert page.is_file()
    html = page.read_text(encoding="utf-8")
    for stage in STAGES:
        assert stage in html
    for lv in LEVELS:
        assert lv in html
    assert "data:image/png;base64," in html  # thumbnails are embedded
    assert 'id="summary-table"' in html and html.count('class="confusion"') == 3  # the task's sections
    for stage in STAGES:  # each stage's own eval outputs are kept too
        assert (out / "eval" / stage / "metrics.json").is_file()
        assert (out / "eval" / stage / "predictions.jsonl").is_file()


def test_fast_demo_grpo_sees_no_reference_and_val_is_not_eval(fast_demo: tuple[Path, dict]) -> None:
    """GRPO's prompts are the training rows without any reference response; SFT's labelled
    file is the skewed one; the validation split shares no scene with the held-out split."""
    import yaml

    from reference_checks import assert_no_reference

    from vlmtune.tasks.clarify.data import scene_key

    out, summary = fast_demo
    data = out / "data"
    rows = {name: [json.loads(x) for x in (data / f"{name}.jsonl").read_text().splitlines()]
            for name in ("train", "val", "eval")}
    grpo_cfg = yaml.safe_load((out / "grpo" / "config.yaml").read_text())
    prompts = [json.loads(x) for x in Path(grpo_cfg["data"]["train_path"]).read_text().splitlines()]
    assert len(prompts) == len(rows["train"]) == summary["data"]["prompts"]
    for prompt, row in zip(prompts, rows["train"]):
        assert_no_reference(prompt, row)
    sft_cfg = yaml.safe_load((out / "sft" / "config.yaml").read_text())
    labelled = [json.loads(x) for x in Path(sft_cfg["data"]["train_path"]).read_text().splitlines()]
    assert summary["data"]["labelled"] == {lv: sum(r["meta"]["level"] == lv for r in labelled) for lv in LEVELS}
    assert summary["data"]["labelled"]["L2"] < summary["data"]["labelled"]["L0"]  # the skew
    scenes = {k: {scene_key(r["meta"]["scene"]) for r in v} for k, v in rows.items()}
    assert scenes["val"] and not scenes["val"] & scenes["eval"] and not scenes["train"] & scenes["eval"]


def test_fast_demo_learning_curve_gain_and_spread(fast_demo: tuple[Path, dict]) -> None:
    out, summary = fast_demo
    curve = summary["grpo_learning_curve"]
    assert [r["step"] for r in curve] == [0, 1, 2]  # FAST: every step
    assert curve[0]["train_reward"] is None and all(isinstance(r["train_reward"], float) for r in curve[1:])
    # the curve's points are the validation metrics the GRPO run logged
    logged = [json.loads(x) for x in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val/strategic_accuracy"] for r in logged] == [r["val_accuracy"] for r in curve[1:]]
    assert [r["reward_mean"] for r in logged] == pytest.approx([r["train_reward"] for r in curve[1:]], abs=1e-4)
    gain = summary["gain"]
    assert gain["strategic_accuracy"] == pytest.approx(
        summary["grpo"]["strategic_accuracy"] - summary["sft"]["strategic_accuracy"], abs=1e-4)
    assert set(summary["grpo_reward_spread"]) == {"reward", "aqua/strategy", "aqua/distortion", "zero_spread_groups"}
    html = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert 'id="grpo-curve"' in html and "<polyline" in html and 'id="reward-spread"' in html


def test_grpo_recipe_takes_an_http_judge(tmp_path: Path) -> None:
    from vlmtune.tasks.clarify.demo import FAST, grpo_recipe

    rule = grpo_recipe(tmp_path / "m", tmp_path / "p.jsonl", tmp_path / "g", FAST)
    assert rule.rewards[0].kwargs == {"judge": "rule"}
    http = grpo_recipe(tmp_path / "m", tmp_path / "p.jsonl", tmp_path / "g", FAST, judge="http://127.0.0.1:9/v1",
                       judge_model="judge-7b")
    assert http.rewards[0].kwargs == {"judge": "recipe"}  # the recipe's judge section, i.e. the URL
    assert (http.judge.base_url, http.judge.model) == ("http://127.0.0.1:9/v1", "judge-7b")


def test_demo_rejects_bad_prompt_variant(tmp_path: Path) -> None:
    from vlmtune.tasks.clarify.demo import run_demo

    with pytest.raises(ValueError, match="prompt_variant"):
        run_demo(tmp_path / "demo", fast=True, prompt_variant=7)


@pytest.mark.slow
def test_full_demo_meets_targets(tmp_path: Path) -> None:
    """The issue's targets: SFT >= 80% overall and >= 60% per level; GRPO keeps the reward
    and loses at most 2 points; at most 10 minutes on 2 cores."""
    from vlmtune.tasks.clarify.demo import run_demo

    s = run_demo(tmp_path / "demo")
    assert s["sft"]["strategic_accuracy"] >= 0.80
    assert min(s["sft"]["per_level"].values()) >= 0.60
    assert s["grpo"]["reward_mean"] >= s["sft"]["reward_mean"]
    assert s["grpo"]["strategic_accuracy"] >= s["sft"]["strategic_accuracy"] - 0.02
    assert s["wall_seconds"] <= 600


def test_demo_model_patch_gives_one_token_per_cell(tmp_path: Path) -> None:
    """vision_patch=28 at 168 px: 3x3 merged image tokens, one per grid cell of the scene."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmtune.demos import build_demo_model
    from vlmtune.tasks.clarify.demo import DemoSettings

    model_dir = build_demo_model(tmp_path / "m", DemoSettings(vision_patch=28))
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    assert model.config.vision_config.patch_size == 28
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = processor(text=[text], images=[Image.new("RGB", (168, 168), "red")], return_tensors="pt")
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 9
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
