"""FSDP on two CPU processes (gloo): the model really is sharded (every tensor of a checkpoint
comes in one piece per process), two processes reach the weights one process reaches with
the same global batch, sharded checkpoints resume exactly and export to a folder plain
transformers loads with the same greedy generations.

SFT is launched the way the docs say, ``accelerate launch --config_file
recipes/accelerate/fsdp_cpu.yaml -m vlmtune``; GRPO with torchrun and
``train.distributed=fsdp``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_export import greedy, plain_load  # tests/ is on sys.path (prepend mode)

from vlmtune.cli import main
from vlmtune.data.builtin import make_shapes_dataset

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ACCELERATE_FSDP = [str(BIN / "accelerate"), "launch", "--config_file",
                   str(ROOT / "recipes" / "accelerate" / "fsdp_cpu.yaml"), "-m", "vlmtune"]
TORCHRUN = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "vlmtune"]

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("fsdp"), n=8, seed=2)


def launch(cmd: list[str], args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(cmd + args + ["--no-progress"], capture_output=True, text=True, timeout=500, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def shards_per_tensor(folder: Path) -> dict[str, int]:
    """How many pieces each tensor of a torch.distributed checkpoint was saved in."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    return {name: len(m.chunks) for name, m in meta.items() if hasattr(m, "chunks")}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def copy_to_resume(run: Path, dest: Path, from_step: int) -> Path:
    """The run as it was when step ``from_step`` had just been saved."""
    shutil.copytree(run, dest)
    for later in (dest / "checkpoints").glob("step-*"):
        if int(later.name.split("-")[1]) > from_step:
            shutil.rmtree(later)
    shutil.rmtree(dest / "final")
    return dest


def test_sft_full_two_processes_equal_one_and_export(tiny_model_dir, data, tmp_path, capsys):
    model = tiny_model_dir("qwen2_vl")
    common = [f"model.path={model}", f"data.train_path={data}", "train.mode=full", "train.lr=1e-2",
              "train.max_steps=3", "train.batch_size=2", "train.max_length=512", "train.scheduler=constant"]
    out = tmp_path / "fsdp"
    launch(ACCELERATE_FSDP, ["sft", *common, f"output.dir={out}", "train.save_every=2"])
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["distributed"] == {"type": "fsdp", "processes": 2}

    # sharding, not DDP in disguise: every trained tensor was saved as one piece per process
    step3 = out / "checkpoints" / "step-3"
    pieces = shards_per_tensor(step3 / "pytorch_model_fsdp_0")
    assert pieces["model.language_model.layers.0.mlp.up_proj.weight"] == 2
    assert pieces["model.visual.blocks.0.attn.qkv.weight"] == 2  # the (frozen) vision tower too
    assert set(pieces.values()) <= {1, 2} and sum(v == 2 for v in pieces.values()) > len(pieces) / 2

    # one process taking both processes' micro-batches of each step (the same rows)
    one = tmp_path / "one"
    assert main(["sft", *common, f"output.dir={one}", "train.grad_accum=2", "--no-progress"]) == 0
    fsdp_w, one_w = (load_file(str(d / "final" / "model.safetensors")) for d in (out, one))
    base = load_file(str(model / "model.safetensors"))
    # measured: 5.4e-5 apart, while training moved weights by 0.03 (Adam turns float-order
    # differences in near-zero gradients into small update differences)
    assert max_difference(fsdp_w, one_w) < 1e-3 and max_difference(one_w, base) > 1e-2

    # exact resume from the sharded step-2 checkpoint
    resumed = copy_to_resume(out, tmp_path / "resumed", 2)
    launch(ACCELERATE_FSDP, ["sft", *common, f"output.dir={resumed}", "train.save_every=2", "resume_from=auto"])
    assert max_difference(load_file(str(resumed / "final" / "model.safetensors")), fsdp_w) == 0.0

    # sharded checkpoint -> export -> plain transformers: the model one process trained
    exported = tmp_path / "exported"
    assert main(["export", str(step3), str(exported)]) == 0
    assert "(dcp, full)" in capsys.readouterr().out
    reference = greedy(*plain_load(one / "final"))
    assert greedy(*plain_load(exported)) == reference != greedy(*plain_load(model))


def test_grpo_lora_sharded_resume_and_merge(tiny_model_dir, data, tmp_path, capsys):
    rewards = tmp_path / "r.py"
    rewards.write_text("def length(completions, **kw):\n    return [len(c[0]['content']) / 10 for c in completions]\n")
    model = tiny_model_dir("qwen2_vl")
    args = ["grpo", f"model.path={model}", f"data.train_path={data}", f"rewards=[{{fn: '{rewards}:length'}}]",
            "grpo.max_new_tokens=6", "grpo.beta=0.04", "train.lr=1e-2", "train.scheduler=constant",
            "train.max_steps=2", "train.save_every=1", "train.distributed=fsdp"]
    out = tmp_path / "run"
    launch(TORCHRUN, [*args, f"output.dir={out}"])
    assert json.loads((out / "run_summary.json").read_text())["distributed"] == {"type": "fsdp", "processes": 2}
    step1 = out / "checkpoints" / "step-1"
    assert {"rng.pt", "rng-rank1.pt", "adapter_config.json"} <= {p.name for p in step1.iterdir()}
    assert 2 in shards_per_tensor(step1 / "pytorch_model_fsdp_0").values()

    # each process samples with its own random state; resuming restores both
    resumed = copy_to_resume(out, tmp_path / "resumed", 1)
    launch(TORCHRUN, [*args, f"output.dir={resumed}", "resume_from=auto"])
    final = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert max_difference(load_file(str(resumed / "final" / "adapter_model.safetensors")), final) == 0.0
    assert (out / "metrics.jsonl").read_text().count("\n") == 2

    # the sharded adapter merges into the base for plain transformers
    merged = tmp_path / "merged"
    assert main(["export", str(out / "checkpoints" / "step-2"), str(merged), "--merge-lora"]) == 0
    assert "(dcp, merged)" in capsys.readouterr().out
    from peft import PeftModel

    base, processor = plain_load(model)
    with_adapter = PeftModel.from_pretrained(base, str(out / "final")).eval()
    assert greedy(*plain_load(merged)) == greedy(with_adapter, processor)

    # a sharded checkpoint resumes sharded only: one process refuses it, naming the layouts
    alone = copy_to_resume(out, tmp_path / "alone", 1)
    assert main([*args[:-1], f"output.dir={alone}", "resume_from=auto", "--no-progress"]) == 2
    assert "written sharded (FSDP)" in capsys.readouterr().err


def test_fsdp_refuses_what_it_cannot_shard():
    """Checked before the model loads: QLoRA's 4-bit weights are not DTensors, and dynamic
    sampling or multi-turn episodes would leave processes running different numbers of forward
    passes (each one a collective under FSDP)."""
    from vlmtune.config import ConfigError, load_recipe
    from vlmtune.train.distributed import Layout, check_mode
    from vlmtune.train.grpo import check_layout

    fsdp, ddp = Layout("fsdp", 2), Layout("ddp", 2)
    with pytest.raises(ConfigError, match="train.mode=qlora cannot be sharded with FSDP"):
        check_mode("qlora", fsdp)
    check_mode("qlora", ddp)
    check_mode("lora", fsdp)
    recipe = load_recipe(None, ["grpo.drop_zero_spread=true"])
    with pytest.raises(ConfigError, match="grpo.drop_zero_spread cannot run under FSDP"):
        check_layout(recipe, fsdp)
    check_layout(recipe, ddp)
    recipe = load_recipe(None, ["env.name=sokoban"])
    with pytest.raises(ConfigError, match=r"multi-turn GRPO \(env.name\) cannot run under FSDP"):
        check_layout(recipe, fsdp)
    check_layout(recipe, ddp)
    recipe = load_recipe(None, ["generation.backend=http"])
    with pytest.raises(ConfigError, match="generation.backend=http cannot run under FSDP yet"):
        check_layout(recipe, fsdp)
    check_layout(recipe, ddp)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_deepspeed_config_is_refused_with_the_fsdp_alternative(tiny_model_dir, data, tmp_path):
    """The shipped ZeRO-3 config is documentation for now: the engines stop at once, naming fsdp.yaml."""
    cmd = [str(BIN / "accelerate"), "launch", "--config_file",
           str(ROOT / "recipes" / "accelerate" / "deepspeed_zero3.yaml"), "--num_processes", "1", "-m", "vlmtune"]
    proc = subprocess.run(cmd + ["sft", f"model.path={tiny_model_dir('qwen2_vl')}", f"data.train_path={data}",
                                 f"output.dir={tmp_path / 'run'}", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "recipes/accelerate/fsdp.yaml" in proc.stderr
