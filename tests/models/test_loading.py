"""Loading: clear errors for paths without a model, adapters found with their base, freezing defaults."""

from __future__ import annotations

import pytest

from vlmtune.config import FreezeConfig
from vlmtune.models.loading import ModelLoadError, check_model_path, load_for_inference, resolve_freeze


def test_missing_and_empty_paths_name_what_was_looked_for(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        check_model_path(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="config.json .* adapter_config.json"):
        check_model_path(tmp_path)
    with pytest.raises(ModelLoadError, match="no GGUF file named 'x.gguf'"):
        check_model_path(tmp_path, gguf_file="x.gguf")


def test_adapter_without_base_is_an_error(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(ModelLoadError, match="without a base model"):
        load_for_inference(tmp_path)


@pytest.mark.parametrize("mode,freeze,expected", [
    ("full", FreezeConfig(), {"vision": True, "projector": False, "language": False}),
    ("lora", FreezeConfig(), {"vision": True, "projector": True, "language": True}),
    ("full", FreezeConfig(vision=False, language=True), {"vision": False, "projector": False, "language": True}),
    ("qlora", FreezeConfig(projector=False), {"vision": True, "projector": False, "language": True}),
])
def test_freeze_defaults_follow_the_mode(mode, freeze, expected):
    assert resolve_freeze(mode, freeze) == expected


def test_lora_with_unfrozen_language_model_is_refused(tiny_model_dir):
    from vlmtune.config import load_recipe
    from vlmtune.models.loading import load_for_training

    r = load_recipe(None, [f"model.path={tiny_model_dir('qwen2_vl')}", "freeze.language=false"])
    with pytest.raises(ValueError, match="use train.mode=full"):
        load_for_training(r.model, "lora", r.lora, r.quant, r.freeze)


def test_hub_ids_pass_only_when_the_hub_is_online(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set"):
        check_model_path("Qwen/Qwen2.5-VL-3B-Instruct")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert check_model_path("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"  # not fetched here
    with pytest.raises(ModelLoadError, match="does not exist"):
        check_model_path(str(tmp_path / "a" / "b"))  # a missing local path is never taken for a hub id
