"""GRPO with ``generation.backend: http`` against a real ``vlmtune serve`` on loopback: the
server samples every group (token ids and log-probs come back), the trainer recomputes the
log-probs and finds them equal to the server's, syncs its LoRA policy after every update,
and the served adapter then answers as the run's final adapter does. A dead server stops
the run with one line after the retries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_helpers import TIMEOUT, png_data_uri, running, stats

from vlmtune.cli import main
from vlmtune.data.builtin import make_shapes_dataset

MODEL = "tiny"
REWARD = "def length(completions, **kw):\n    return [len(c[0]['content']) / 10 for c in completions]\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("grpo-http")
    (root / "r.py").write_text(REWARD)
    return make_shapes_dataset(root / "shapes", n=8, seed=0), root / "r.py"


@pytest.fixture(scope="module")
def server(tiny_model_dir, server_logs, one_torch_thread) -> Iterator[str]:
    from vlmtune.models.loading import load_for_inference
    from vlmtune.serve import create_app

    app = create_app(load_for_inference(tiny_model_dir("qwen2_vl")), MODEL, allow_weight_updates=True)
    with running(app) as url:
        yield url


def grpo_args(model: Path, data: tuple[Path, Path], out: Path, base_url: str, *extra: str) -> list[str]:
    shapes, rewards = data
    return ["grpo", f"model.path={model}", f"data.train_path={shapes}", f"output.dir={out}",
            f"rewards=[{{fn: '{rewards}:length'}}]", "grpo.num_generations=3", "grpo.prompts_per_step=2",
            "grpo.max_new_tokens=6", "train.max_steps=2", "train.lr=5e-2", "train.scheduler=constant",
            "lora.dropout=0",  # (dropout in the update's forward would be a real mismatch with the sampler)
            "generation.backend=http", f"generation.options={{base_urls: ['{base_url}/v1'], sync_dir: '{out}-sync'}}",
            "--no-progress", *extra]


def greedy(url: str, model: str) -> str:
    body = {"model": model, "max_tokens": 12, "temperature": 0,  # as offline_answer asks
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri()}},
                                                      {"type": "text", "text": "What shape is this?"}]}]}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_two_grpo_steps_sample_on_the_server_and_sync_the_adapter(server, tiny_model_dir, data, tmp_path):
    model = tiny_model_dir("qwen2_vl")
    base_answer = greedy(server, MODEL)
    before = stats(server, key=None)
    out = tmp_path / "run"
    assert main(grpo_args(model, data, out, server)) == 0

    after = stats(server, key=None)
    # the policy went to the server before the first step and after each of the two updates
    assert after["weights"]["adapter_loads"] - before["weights"]["adapter_loads"] == 3
    assert after["weights"]["adapters_loaded"] == ["policy"]
    # every group was sampled there, by the synced adapter: 2 steps x 2 prompts
    assert after["served_by_model"].get("policy", 0) - before["served_by_model"].get("policy", 0) == 4

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["time/sync"] > 0 for r in rows)
    for r in rows:  # the trainer's own log-probs of the server's tokens equal the server's
        assert abs(r["sampling/ratio_mean"] - 1) < 1e-3 and r["sampling/abs_logp_diff"] < 1e-3, r

    # the served adapter is the run's final policy, and it answers differently from the base
    from test_serve_weights import offline_answer  # noqa: E402 - the same question, answered offline

    assert greedy(server, "policy") == offline_answer(out / "final") != base_answer


def test_full_fine_tuning_reloads_the_whole_model(server, tiny_model_dir, data, tmp_path):
    """Without an adapter the policy goes over as a whole model (SGLang's update_weights_from_disk);
    the sampler's log-probs at step 2 equal the trainer's only if step 1's update arrived."""
    for name in stats(server, key=None)["weights"]["adapters_loaded"]:  # full weights go into a plain model
        httpx.post(f"{server}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=TIMEOUT).raise_for_status()
    before = stats(server, key=None)["weights"]
    out = tmp_path / "run"
    try:
        assert main(grpo_args(tiny_model_dir("qwen2_vl"), data, out, server, "train.mode=full", "train.lr=1e-3")) == 0
    finally:  # the server's own weights back
        httpx.post(f"{server}/update_weights_from_disk", json={"model_path": str(tiny_model_dir("qwen2_vl"))},
                   timeout=TIMEOUT).raise_for_status()
    after = stats(server, key=None)["weights"]
    assert after["reloads"] - before["reloads"] == 4 and after["adapter_loads"] == before["adapter_loads"]
    step2 = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    assert abs(step2["sampling/ratio_mean"] - 1) < 1e-3 and step2["grad_norm"] > 0


def test_dead_server_stops_the_run_in_one_line(tiny_model_dir, data, tmp_path, free_port, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    rc = main(grpo_args(tiny_model_dir("qwen2_vl"), data, tmp_path / "run", url,
                       "generation.options.retries=2", "generation.options.backoff_s=0.01"))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("vlmtune grpo:")]
    assert rc == 3 and len(lines) == 1 and "Traceback" not in err, err
    # (the first thing the run sends is its policy, before any generation)
    assert f"generation server {url}/v1 did not answer /load_lora_adapter after 3 attempts (ConnectError" \
        in lines[0]
