"""Rendering with loss masks, for every family: the labelled tokens are exactly the
assistant texts plus the end-of-turn token; images, system and user turns never are."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmtune.batching.collate import collate
from vlmtune.batching.render import IGNORE, TooLong, render, render_prompt
from vlmtune.data.sample import Sample
from vlmtune.models.families import FAMILIES, list_families

ANSWERS = ["The square is red.", "It is on the left."]


def conversation() -> Sample:
    image = Image.new("RGB", (168, 168), (200, 30, 30))
    text = lambda t: [{"type": "text", "text": t}]  # noqa: E731
    return Sample(messages=[
        {"role": "system", "content": text("Answer briefly.")},
        {"role": "user", "content": [{"type": "image"}, *text("What colour is the square?")]},
        {"role": "assistant", "content": text(ANSWERS[0])},
        {"role": "user", "content": text("Where is it?")},
        {"role": "assistant", "content": text(ANSWERS[1])},
    ], images=[image])


def spans(labels: torch.Tensor) -> list[list[int]]:
    """Runs of consecutive labelled positions."""
    out, current = [], []
    for i, v in enumerate(labels.tolist()):
        if v != IGNORE:
            current.append(i)
        elif current:
            out.append(current)
            current = []
    return out + ([current] if current else [])


@pytest.fixture(scope="module")
def processors(tiny_model_dir):
    from transformers import AutoProcessor

    return lambda family: AutoProcessor.from_pretrained(tiny_model_dir(family))


@pytest.mark.parametrize("family", list_families())
def test_labels_are_exactly_the_assistant_turns(family, processors):
    processor = processors(family)
    tok = processor.tokenizer
    enc = render(conversation(), processor)
    ids, labels = enc["input_ids"][0], enc["labels"][0]
    runs = spans(labels)
    assert len(runs) == 2
    end = FAMILIES[family].end_of_turn
    for run, answer in zip(runs, ANSWERS):
        text = tok.decode(ids[run], skip_special_tokens=False)
        assert text.strip() == f"{answer}{end}", (family, text)
        assert torch.equal(labels[run], ids[run])
    image_id = tok.convert_tokens_to_ids(FAMILIES[family].image_pad_token)
    assert (ids == image_id).sum() > 0 and not (labels == image_id).any()


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_last_assistant_only(family, processors):
    enc = render(conversation(), processors(family), loss_on="last_assistant")
    runs = spans(enc["labels"][0])
    assert len(runs) == 1
    decoded = processors(family).tokenizer.decode(enc["input_ids"][0][runs[0]])
    assert decoded.startswith(ANSWERS[1])


def test_loss_on_all_still_skips_images(processors):
    processor = processors("qwen2_vl")
    enc = render(conversation(), processor, loss_on="all")
    image_id = processor.tokenizer.convert_tokens_to_ids(FAMILIES["qwen2_vl"].image_pad_token)
    assert (enc["labels"] != IGNORE).sum() > (enc["input_ids"] != image_id).sum() - 5
    assert not (enc["labels"] == image_id).any()


def test_too_long_is_an_error_not_a_cut(processors):
    with pytest.raises(TooLong):
        render(conversation(), processors("qwen2_vl"), max_length=30)


def test_system_prompt_is_added_only_when_missing(processors):
    processor = processors("qwen2_vl")
    s = conversation()
    no_system = Sample(messages=s.messages[1:], images=s.images)
    a = render(no_system, processor, system_prompt="Answer briefly.")
    b = render(s, processor, system_prompt="Something else entirely.")
    assert torch.equal(a["input_ids"], b["input_ids"])


def test_prompt_rendering_drops_the_reference_answer(processors):
    processor = processors("qwen2_vl")
    s = conversation()
    s.messages = s.messages[:3]
    prompt = render_prompt(s, processor)
    text = processor.tokenizer.decode(prompt["input_ids"][0])
    assert ANSWERS[0] not in text and text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3", "gemma3"])
def test_collate_pads_and_keeps_image_inputs(family, processors):
    processor = processors(family)
    short = conversation()
    short.messages = short.messages[:3]
    items = [render(conversation(), processor), render(short, processor)]
    batch = collate(items, pad_id=processor.tokenizer.pad_token_id or 0)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == 2
    assert batch["attention_mask"][1].sum() == items[1]["input_ids"].shape[1]
    for key in FAMILIES[family].extra_inputs:
        if key in items[0]:
            assert key in batch
