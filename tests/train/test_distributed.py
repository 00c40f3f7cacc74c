"""Two processes on the CPU (gloo): the same code path as multi-GPU (NCCL) training,
minus the device. SFT shards micro-batches by rank; GRPO ranks may hold different numbers
of groups after dynamic sampling and must neither hang nor diverge.

Launched by torchrun with ACCELERATE_USE_CPU=true, which accelerate turns into its
multi-CPU mode; ``accelerate launch --cpu --num_processes 2`` starts a single process
unless MPI is installed (it waits for mpirun), so it would test nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlmtune.data.builtin import make_shapes_dataset

BIN = Path(sys.executable).parent
LAUNCH = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(BIN / "vlmtune")]

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("ddp"), n=8, seed=2)


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(LAUNCH + args + ["--no-progress"], capture_output=True, text=True, timeout=500, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_sft_two_processes(tiny_model_dir, data, tmp_path):
    out = tmp_path / "run"
    run(["sft", f"model.path={tiny_model_dir('qwen2_vl')}", f"data.train_path={data}", f"output.dir={out}",
         "train.max_steps=3", "train.batch_size=2", "train.grad_accum=2", "train.max_length=512", "train.save_every=2"])
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["steps"] == 3 and summary["train_loss_last"] > 0
    assert (out / "final" / "adapter_model.safetensors").is_file() and (out / "checkpoints" / "step-2").is_dir()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3  # only the main process logs
    # Compute is counted over both processes: one process taking all 4 micro-batches of each
    # step (the same rows) counts the same tokens.
    from vlmtune.config import load_recipe
    from vlmtune.train.sft import run_sft

    alone = run_sft(load_recipe(None, [
        f"model.path={tiny_model_dir('qwen2_vl')}", f"data.train_path={data}", f"output.dir={tmp_path / 'alone'}",
        "train.max_steps=3", "train.batch_size=2", "train.grad_accum=4", "train.max_length=512"]), show_progress=False)
    assert summary["compute"]["processes"] == 2 and alone["compute"]["processes"] == 1
    assert summary["distributed"] == {"type": "ddp", "processes": 2}
    assert alone["distributed"] == {"type": "single", "processes": 1}
    assert summary["compute"]["train_tokens"] == alone["compute"]["train_tokens"] > 0
    two, one = (json.loads((tmp_path / run / "compute_report.json").read_text()) for run in ("run", "alone"))
    assert two["device"]["count"] == 2 and one["device"]["count"] == 1
    assert two["flops"]["total"] == one["flops"]["total"] > 0  # same rows, same FLOPs, however many devices
    assert two["device_hours"] >= two["wall_hours"] * 1.5  # two devices busy for about the wall time


def test_grpo_two_processes_with_dynamic_sampling(tiny_model_dir, data, tmp_path):
    rewards = tmp_path / "r.py"
    rewards.write_text("def first_is_digit(prompts, completions, **kw):\n"
                       "    return [float(c[0]['content'][:1].isdigit()) for c in completions]\n")
    out = tmp_path / "run"
    run(["grpo", f"model.path={tiny_model_dir('qwen2_vl')}", f"data.train_path={data}", f"output.dir={out}",
         f"rewards=[{{fn: '{rewards}:first_is_digit'}}]", "grpo.max_new_tokens=6", "grpo.beta=0.04",
         "grpo.drop_zero_spread=true", "train.max_steps=3"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["groups_zero_spread"] >= r["groups_dropped"] for r in rows)
    assert (out / "final" / "adapter_model.safetensors").is_file()
