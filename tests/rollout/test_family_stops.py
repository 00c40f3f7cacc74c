"""Generation stops at the family's end tokens: a family entry with a different end-of-turn
token ends completions there, one prompt at a time (GRPO's default) and batched (eval's)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image

from vlmtune.data.sample import Sample
from vlmtune.models.families import get_family
from vlmtune.rollout.generator import SamplingParams, first_texts
from vlmtune.rollout.hf import HFGenerator

pytestmark = pytest.mark.timeout(120)
GREEDY = SamplingParams(max_new_tokens=5, do_sample=False)


def prompt() -> Sample:
    return Sample(messages=[{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What colour is the square?"}]}],
        images=[Image.new("RGB", (168, 168), (30, 60, 200))])


@pytest.fixture(scope="module")
def qwen(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_model_dir("qwen2_vl")
    return AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)


def test_a_family_with_another_end_of_turn_stops_there(qwen):
    model, processor = qwen
    fam = get_family("qwen2_vl")
    [[plain]] = HFGenerator(model, processor, batch_size=1).generate([prompt()], GREEDY)
    first = int(plain.ids[0])
    assert plain.tokens > 1 and first not in HFGenerator(model, processor).end_ids  # precondition
    # the greedy first token becomes the family's end of turn: the completion is that one token
    odd = replace(fam, end_of_turn=processor.tokenizer.convert_ids_to_tokens(first), stop_tokens=())
    gen = HFGenerator(model, processor, family=odd, batch_size=1)
    assert first in gen.end_ids
    [[stopped]] = gen.generate([prompt()], GREEDY)
    assert stopped.ids.tolist() == [first] and stopped.finish_reason == "stop" and not stopped.truncated
    assert stopped.text == ""  # the end token is not text

    batched = HFGenerator(model, processor, family=odd).generate([prompt(), prompt()], GREEDY)
    assert [[c.ids.tolist() for c in group] for group in batched] == [[[first]]] * 2
    assert first_texts(HFGenerator(model, processor).generate([prompt()], GREEDY)) == [plain.text]
