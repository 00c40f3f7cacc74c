"""``vlmtune merge``: the merged model gives the adapter's outputs and loads without peft."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmtune.batching.render import render_prompt
from vlmtune.data.builtin import shapes_samples


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmtune.models.families import FAMILIES

    base = tiny_model_dir("qwen2_vl")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=FAMILIES["qwen2_vl"].lora_targets,
                                      init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(out))
    AutoProcessor.from_pretrained(base).save_pretrained(str(out))
    return out


def test_merged_model_matches_adapter(adapter, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = tmp_path / "merged"
    proc = subprocess.run([str(Path(sys.executable).parent / "vlmtune"), "merge", str(adapter), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    processor = AutoProcessor.from_pretrained(out)
    enc = render_prompt(next(shapes_samples(1)), processor)
    merged = AutoModelForImageTextToText.from_pretrained(out).eval()
    with_adapter = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen2_vl")), str(adapter)).eval()
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen2_vl")).eval()
    with torch.no_grad():
        a, b, c = merged(**enc).logits, with_adapter(**enc).logits, base(**enc).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(a, c, atol=1e-3), "the adapter changed the model"


def test_merge_refuses_non_adapters_and_non_empty_outputs(adapter, tiny_model_dir, tmp_path):
    from vlmtune.export import merge_adapter
    from vlmtune.models.loading import ModelLoadError

    with pytest.raises(ModelLoadError, match="not a PEFT adapter"):
        merge_adapter(tiny_model_dir("qwen2_vl"), tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        merge_adapter(adapter, tmp_path / "full")
