"""FLOPs per unit by hand on a known config, and compute reports of tiny SFT and GRPO runs
whose figures add up: units x FLOPs per unit = FLOPs per line, lines sum to the total, and
the units equal what the data holds (counted here independently of the meter)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmtune.flops import PartFlops, model_flops_from_config


def test_part_flops_by_hand():
    frozen = PartFlops(params=100)
    assert frozen.forward() == 200 and frozen.train() == 200  # nothing flows back
    lora = PartFlops(params=100, trainable=10, backward=True)
    assert lora.train() == 200 + 200 + 20  # forward, input gradients, LoRA weight gradients
    assert lora.train(recompute=True) == 200 + 200 + 20 + 200  # checkpointing: forward once more
    full = PartFlops(params=100, trainable=100, backward=True)
    assert full.train() == 6 * 100  # Kaplan's 6N


def test_flops_per_unit_from_the_tiny_qwen2_vl_config(tiny_model_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir("qwen2_vl"))
    t, v = config.text_config, config.vision_config
    d, i, layers = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    d_head = d // t.num_attention_heads
    kv = t.num_key_value_heads * d_head
    language = layers * (d * d + 2 * d * kv + d * d + 3 * d * i) + d * t.vocab_size  # attn, MLP, head
    e = v.embed_dim
    vision = (3 * v.temporal_patch_size * v.patch_size**2 * e  # patch embedding
              + v.depth * (e * 3 * e + e * e + 2 * e * e * v.mlp_ratio))  # qkv, proj, MLP per block
    merged = e * v.spatial_merge_size**2
    projector = merged * merged + merged * v.hidden_size  # the merger's two linears
    assert (language, vision, projector) == (425_984, 173_568, 98_304)  # the tiny factory's sizes

    flops = model_flops_from_config(config)  # full fine-tuning: projector and language train
    assert flops.parts["language"] == PartFlops(language, language, True)
    assert flops.parts["projector"] == PartFlops(projector, projector, True)
    assert flops.parts["vision"] == PartFlops(vision, 0, False)
    assert flops.per_unit("train") == {"vision": 2 * vision, "projector": 6 * projector, "language": 6 * language}
    assert flops.per_unit("forward") == {"vision": 2 * vision, "projector": 2 * projector, "language": 2 * language}
    assert flops.patch_volume == 3 * 2 * 14 * 14 and flops.image_token_id == config.image_token_id


def assert_adds_up(report: dict) -> None:
    """Every FLOPs line is units x FLOPs per unit; the lines sum to the total; rates follow."""
    total = 0.0
    for kind in ("train", "forward"):
        for part, per in report["flops_per_unit"].items():
            line = report["units"][kind][part] * per[kind]
            assert report["flops"][kind][part] == line, (kind, part)
            total += line
    assert report["flops"]["total"] == total > 0
    assert report["achieved_flops_per_second"] == pytest.approx(total / report["wall_seconds"])
    d = report["device"]
    assert report["device_hours"] == pytest.approx(report["wall_seconds"] * d["count"] / 3600, rel=1e-3)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    from vlmtune.data.builtin import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n=4, seed=0)


def _rendered(shapes: Path, model: Path):
    from transformers import AutoProcessor

    from vlmtune.batching.render import render
    from vlmtune.data.readers import read_samples
    from vlmtune.models.families import get_family

    processor = AutoProcessor.from_pretrained(model)
    return [render(s, processor, family=get_family("qwen2_vl"), max_length=512) for s in read_samples(shapes)[0]]


def test_sft_run_report_adds_up(tiny_model_dir, shapes, tmp_path):
    from vlmtune.cli import main

    model, run = tiny_model_dir("qwen2_vl"), tmp_path / "sft"
    # four steps of one sample: every sample trained exactly once
    assert main(["sft", f"model.path={model}", f"data.train_path={shapes}", f"output.dir={run}",
                 "train.max_length=512", "train.max_steps=4", "train.batch_size=1", "--no-progress"]) == 0
    report = json.loads((run / "compute_report.json").read_text())
    assert_adds_up(report)
    rows = _rendered(shapes, model)
    tokens = sum(int(r["attention_mask"].sum()) for r in rows)
    labels = sum(int((r["labels"].reshape(-1)[1:] != -100).sum()) for r in rows)
    assert report["tokens"] == {"prompt": tokens - labels, "completion": labels, "trained": tokens, "forward": 0}
    assert report["image_tokens"]["trained"] == 4 * 36  # a 168-px image: 12 x 12 patches, merged 2 x 2
    assert report["vision_patches"]["trained"] == 4 * 144
    assert report["device"]["kind"] == "cpu" and report["device"]["count"] == 1
    lora = report["params"]["language"]
    assert 0 < lora["trainable"] < lora["matmul"] and report["params"]["vision"]["trainable"] == 0
    # LoRA: the frozen language model still passes gradients back (4 FLOPs a weight) plus LoRA's own 2
    assert report["flops_per_unit"]["language"]["train"] == 4 * lora["matmul"] + 2 * lora["trainable"]
    assert report["flops_per_unit"]["vision"]["train"] == report["flops_per_unit"]["vision"]["forward"]
    md = (run / "compute_report.md").read_text()
    assert f"| **total** | | | | **{report['flops']['total']:.3e}** |" in md
    summary = json.loads((run / "run_summary.json").read_text())["compute"]
    assert summary["flops_estimate"] == report["flops"]["total"]


def test_grpo_run_report_adds_up(tiny_model_dir, shapes, tmp_path):
    from transformers import AutoProcessor

    from vlmtune.batching.render import render_prompt
    from vlmtune.config import load_recipe
    from vlmtune.data.readers import read_samples
    from vlmtune.train.grpo import run_grpo

    model, run = tiny_model_dir("qwen2_vl"), tmp_path / "grpo"
    rewards = tmp_path / "r.py"
    rewards.write_text("def length(prompts, completions, **kw):\n    return [float(len(c[0]['content'])) for c in completions]\n")
    g = 3
    run_grpo(load_recipe(None, [f"model.path={model}", f"data.train_path={shapes}", f"output.dir={run}",
                                f"rewards=[{{fn: '{rewards}:length'}}]", f"grpo.num_generations={g}",
                                "grpo.prompts_per_step=2", "grpo.max_new_tokens=6", "train.max_steps=2",
                                "grpo.beta=0.04"]), show_progress=False)
    report = json.loads((run / "compute_report.json").read_text())
    assert_adds_up(report)
    processor = AutoProcessor.from_pretrained(model)
    prompt = sum(int(render_prompt(s, processor)["input_ids"].shape[1]) for s in read_samples(shapes)[0])
    t = report["tokens"]
    assert t["prompt"] == prompt  # two steps of two prompts: each of the four once
    assert 0 < t["completion"] <= 4 * g * 6
    # generation runs each prompt once per group (its KV cache is repeated for the group's
    # completions); the reference pass (beta > 0) and the update run the prompt once per
    # group (shared prefix) and every completion token
    assert t["forward"] == prompt + t["completion"] + (prompt + t["completion"])
    assert t["trained"] == prompt + t["completion"]
    assert report["vision_patches"] == {"trained": 4 * 144, "forward": 2 * 4 * 144}
