"""The training dataset keeps each sample's text part and re-renders only its images:
what an access returns must equal a full render, for every family."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmtune.batching import dataset as ds_mod
from vlmtune.batching.dataset import prepare
from vlmtune.config import DataConfig
from vlmtune.data.report import BadRows
from vlmtune.data.sample import Sample
from vlmtune.models.families import list_families

pytestmark = pytest.mark.timeout(120)


def _text(t):
    return [{"type": "text", "text": t}]


def _samples() -> list[Sample]:
    out = []
    for k, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        out.append(Sample(messages=[
            {"role": "user", "content": [{"type": "image"}, *_text(f"What colour is shape {k}?")]},
            {"role": "assistant", "content": _text(f"It is colour {k}.")}],
            images=[Image.new("RGB", (84 + 28 * k, 84), colour)]))  # sizes differ: grids differ
    out.append(Sample(messages=[{"role": "user", "content": _text("No image here.")},
                                {"role": "assistant", "content": _text("Fine.")}]))
    return out


def _equal(a, b):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k], k


@pytest.mark.parametrize("family", list_families())
def test_access_equals_full_render(family, tiny_model_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir(family))
    data = prepare(_samples(), processor, DataConfig(), 4096, BadRows(), "mem.jsonl", show_progress=False)
    assert len(data) == 4
    for i in range(len(data)):
        _equal(data[i], data.render(i))
    if family.startswith("qwen"):  # the demo's families take the fast path
        assert data.text_parts is not None and "pixel_values" not in data.text_parts[0]


def test_nothing_kept_above_the_token_budget(tiny_model_dir, monkeypatch):
    from transformers import AutoProcessor

    monkeypatch.setattr(ds_mod, "MAX_KEPT_TOKENS", 10)
    processor = AutoProcessor.from_pretrained(tiny_model_dir("qwen2_vl"))
    data = prepare(_samples(), processor, DataConfig(), 4096, BadRows(), "mem.jsonl", show_progress=False)
    assert data.text_parts is None
    _equal(data[1], data.render(1))
