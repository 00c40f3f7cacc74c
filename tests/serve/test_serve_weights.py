"""Weight changes on a running ``vlmtune serve`` (tiny Qwen2-VL on loopback): LoRA adapters
loaded and unloaded by name with vLLM's bodies, requests naming them in ``model``, full
weights reloaded from a folder with SGLang's body, the counters on ``/v1/stats``, and every
refusal a clear 4xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from serve_helpers import KEY, TIMEOUT, auth, chat, error_message, png_data_uri, running, stats

MODEL = "tiny"


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A real PEFT adapter over the tiny model whose weights are far from the identity, so it
    visibly changes what the model says."""
    from peft import LoraConfig, get_peft_model

    from vlmtune.models.families import get_family
    from vlmtune.models.loading import load_for_inference

    torch.manual_seed(seed)
    base = load_for_inference(base_dir).model
    config = LoraConfig(r=8, lora_alpha=64, target_modules=get_family("qwen2_vl").lora_targets,
                        init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(tiny_model_dir("qwen2_vl"), root / name, seed) for name, seed in (("a", 1), ("b", 2))}


@pytest.fixture(scope="module")
def server(tiny_model_dir, server_logs, one_torch_thread) -> Iterator[str]:
    from vlmtune.models.loading import load_for_inference
    from vlmtune.serve import create_app

    app = create_app(load_for_inference(tiny_model_dir("qwen2_vl")), MODEL, api_key=KEY, allow_weight_updates=True)
    with running(app) as url:
        yield url


def post(url: str, path: str, body: dict, key: str | None = KEY) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=auth(key) if key else None, timeout=TIMEOUT)


def ask(url: str, model: str | None) -> str:
    """Greedy answer to one image + question: deterministic for a given set of weights."""
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri()}},
                                                      {"type": "text", "text": "What shape is this?"}]}],
            "max_tokens": 12, "temperature": 0}
    if model is not None:
        body["model"] = model
    r = chat(url, body, auth())
    assert r.status_code == 200, r.text
    assert r.json()["model"] == (model if model in ("a", "b") else MODEL)
    return r.json()["choices"][0]["message"]["content"]


def offline_answer(model_dir: Path) -> str:
    """The same question answered by the same weights loaded the ordinary way, without HTTP."""
    from vlmtune.models.loading import load_for_inference
    from vlmtune.rollout.generator import SamplingParams
    from vlmtune.serve.engine import Engine

    engine = Engine(load_for_inference(model_dir), "offline")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape is this?"}]}]
    from vlmtune.data.sample import load_image

    image = load_image(png_data_uri())
    return engine.generate(engine.encode(messages, [image]), SamplingParams(max_new_tokens=12, do_sample=False))[0].text


def test_adapters_load_switch_replace_and_unload(server, adapters):
    base = ask(server, MODEL)
    r = post(server, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": str(adapters["a"])})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'a' added successfully."
    assert [m["id"] for m in httpx.get(f"{server}/v1/models", headers=auth(), timeout=TIMEOUT).json()["data"]] \
        == [MODEL, "a"]

    with_a = ask(server, "a")
    assert with_a == offline_answer(adapters["a"]) != base, "the adapter answers as it does loaded offline"
    assert ask(server, MODEL) == base, "the base model is still served under its own name"

    # a second load under the same name is refused unless it asks to replace (a trainer's sync)
    r = post(server, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": str(adapters["b"])})
    assert r.status_code == 400 and "already been loaded" in error_message(r)
    r = post(server, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": str(adapters["b"]), "load_inplace": True})
    assert r.status_code == 200
    assert ask(server, "a") == offline_answer(adapters["b"]) != with_a

    # with adapters loaded, a model name the server does not know is an error, not the base
    r = chat(server, {"model": "policy-typo", "messages": [{"role": "user", "content": "hi"}]}, auth())
    assert r.status_code == 404 and "'policy-typo' does not exist" in error_message(r) and "a, tiny" in error_message(r)

    r = post(server, "/update_weights_from_disk", {"model_path": str(adapters["a"])})
    assert r.status_code == 409 and "unload them first" in error_message(r)

    assert post(server, "/v1/unload_lora_adapter", {"lora_name": "a"}).status_code == 200
    r = post(server, "/v1/unload_lora_adapter", {"lora_name": "a"})
    assert r.status_code == 404 and "cannot be found" in error_message(r)
    assert ask(server, MODEL) == base

    counters = stats(server)
    assert counters["weights"] == {"adapters_loaded": [], "adapter_loads": 2, "adapter_unloads": 1, "reloads": 0,
                                   "failures": 3}
    assert counters["served_by_model"] == {MODEL: 3, "a": 2}  # + offline answers, which the server never saw


def test_bad_adapters_are_clear_4xx(server, adapters, tmp_path):
    cases = {
        "missing": (str(tmp_path / "nowhere"), 404, "no adapter found: lora_path"),
        "not an adapter": (str(tmp_path), 404, "holds no adapter_config.json"),
    }
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((adapters["a"] / "adapter_config.json").read_text())
    data = (adapters["a"] / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated weights"] = (str(broken), 400, "adapter_model.safetensors")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    config = json.loads((adapters["a"] / "adapter_config.json").read_text())
    (foreign / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["no_such_proj"]}))
    (foreign / "adapter_model.safetensors").write_bytes(data)
    cases["made for another model"] = (str(foreign), 400, "cannot load this adapter onto the served model")
    for what, (path, status, words) in cases.items():
        r = post(server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": path})
        assert r.status_code == status and words in error_message(r), (what, r.text)
    r = post(server, "/v1/load_lora_adapter", {"lora_name": MODEL, "lora_path": str(adapters["a"])})
    assert r.status_code == 400 and "served model's own name" in error_message(r)
    r = post(server, "/v1/load_lora_adapter", {"lora_name": "x"})
    assert r.status_code == 422 and "lora_path" in error_message(r)
    r = post(server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(adapters["a"])}, key=None)
    assert r.status_code == 401
    assert stats(server)["weights"]["adapters_loaded"] == []


def test_full_weights_reload_from_disk(server, tiny_model_dir, tmp_path):
    from vlmtune.models.loading import load_for_inference

    base = ask(server, MODEL)
    changed = load_for_inference(tiny_model_dir("qwen2_vl")).model
    with torch.no_grad():
        for name, p in changed.named_parameters():
            if "language_model.layers.1" in name and p.dim() == 2:
                p.mul_(-3.0)
    new = tmp_path / "new"
    changed.save_pretrained(str(new))
    r = post(server, "/update_weights_from_disk", {"model_path": str(new)}, key=None)
    assert r.status_code == 401, "changing the weights needs the key like every /v1 route"
    reloads = stats(server)["weights"]["reloads"]
    r = post(server, "/update_weights_from_disk", {"model_path": str(new)})
    assert r.status_code == 200 and r.json()["success"] is True
    assert stats(server)["weights"]["reloads"] == reloads + 1
    try:
        assert ask(server, MODEL) != base
        r = post(server, "/update_weights_from_disk", {"model_path": str(tmp_path / "nowhere")})
        assert r.status_code == 404 and "not a directory on the server" in error_message(r)
        empty = tmp_path / "empty"
        empty.mkdir()
        r = post(server, "/update_weights_from_disk", {"model_path": str(empty)})
        assert r.status_code == 400 and "no weights" in error_message(r)
    finally:  # the module's other tests expect the original weights
        assert post(server, "/update_weights_from_disk", {"model_path": str(tiny_model_dir("qwen2_vl"))}).status_code == 200
    assert ask(server, MODEL) == base


def test_weight_routes_are_off_by_default(vlm, adapters):
    """The session's tiny server was started without --enable-weight-updates."""
    r = post(vlm, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": str(adapters["a"])})
    assert r.status_code == 403 and "--enable-weight-updates" in error_message(r)
    r = post(vlm, "/update_weights_from_disk", {"model_path": "/tmp"})
    assert r.status_code == 403
