"""Sampling on a shared prompt prefix: the nucleus filter and the sampling rule against hand
values and frequencies; greedy decoding on stacked, left-padded prefixes gives transformers'
``generate`` output for each prompt alone, for every family."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmtune.data.sample import Sample
from vlmtune.models.families import FAMILIES, list_families
from vlmtune.rollout.generator import SamplingParams
from vlmtune.rollout.hf import HFGenerator
from vlmtune.rollout.prefix_sampling import (
    next_tokens,
    position_ids,
    sample_on_shared_prefix,
    top_k_filter,
    top_p_filter,
)

pytestmark = pytest.mark.timeout(300)


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(1.0) == [True] * 4
    assert kept(0.7) == [True, True, False, False]  # 0.5 < 0.7 <= 0.5 + 0.3
    assert kept(0.85) == [True, True, True, False]
    assert kept(0.4) == [True, False, False, False]
    assert kept(0.01) == [True, False, False, False]  # the most probable token always stays
    shuffled = logits[:, [2, 0, 3, 1]]  # the filter follows the values, not their order
    assert torch.isfinite(top_p_filter(shuffled, 0.7))[0].tolist() == [False, True, False, True]


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 2.5]])
    assert torch.isfinite(top_k_filter(logits, 2))[0].tolist() == [False, True, False, False, True]
    assert torch.equal(top_k_filter(logits, 0), logits) and torch.equal(top_k_filter(logits, 5), logits)
    torch.manual_seed(0)
    drawn = next_tokens(logits.expand(2000, -1), SamplingParams(top_k=2, top_p=1.0))
    assert set(drawn.tolist()) == {1, 4}


def test_next_tokens_draws_from_the_tempered_nucleus():
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0]).expand(40000, -1)
    assert next_tokens(logits[:3], SamplingParams(do_sample=False)).tolist() == [0, 0, 0]
    counts = torch.bincount(next_tokens(logits, SamplingParams(temperature=2.0)), minlength=4) / len(logits)
    expect = torch.softmax(logits[0] / 2.0, -1)
    torch.testing.assert_close(counts, expect, atol=0.01, rtol=0)
    # top-p 0.6 at temperature 2: probabilities (0.41, 0.25, 0.15, 0.09) keep the first two, renormalised
    counts = torch.bincount(next_tokens(logits, SamplingParams(temperature=2.0, top_p=0.6)), minlength=4) / len(logits)
    p0, p1 = expect[0].item(), expect[1].item()
    torch.testing.assert_close(counts, torch.tensor([p0 / (p0 + p1), p1 / (p0 + p1), 0, 0]), atol=0.01, rtol=0)


def test_positions_per_row_and_mrope_axes():
    start = torch.tensor([5, 9])
    assert position_ids(start, 2, 3, "1d").tolist() == [[7, 8, 9], [11, 12, 13]]
    mrope = position_ids(start, 0, 1, "mrope")
    assert mrope.shape == (3, 2, 1) and mrope[:, :, 0].tolist() == [[5, 9]] * 3


def prompt(colour, size, text) -> Sample:
    return Sample(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
                  images=[Image.new("RGB", (size, size), colour)])


@pytest.mark.parametrize("family", list_families())
def test_greedy_on_stacked_prefixes_equals_generate_alone(family, tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_model_dir(family)
    model, processor = AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)
    gen = HFGenerator(model, processor, batch_size=1)
    samples = [prompt((30, 60, 200), 168, "What colour is the square?"),
               prompt((200, 30, 30), 112, "Name the colour of the big square in this picture, in one word.")]
    greedy = SamplingParams(max_new_tokens=8, do_sample=False, n=2)
    alone = [gen.generate([s], greedy)[0][0] for s in samples]
    prompts = [gen.encode([s]) for s in samples]
    assert prompts[0]["input_ids"].shape[1] != prompts[1]["input_ids"].shape[1]  # stacking pads one of them
    groups = sample_on_shared_prefix(model, prompts, greedy, gen.end_ids, gen.pad_id, FAMILIES[family].position_style)
    for ids, want in zip(groups, alone):
        assert ids.shape[0] == 2
        for row in ids:
            got = gen._completion(row, (), False)
            assert got.ids.tolist() == want.ids.tolist() and got.text == want.text


def test_sampling_uses_the_shared_prefix_and_keeps_n_per_prompt(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_model_dir("qwen2_vl")
    model, processor = AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)
    gen = HFGenerator(model, processor, batch_size=2)
    calls = []
    model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw.get("pixel_values") is not None), with_kwargs=True)
    samples = [prompt((30, 60, 200), 168, "What colour?"), prompt((200, 30, 30), 112, "Which colour is it?")]
    groups = gen.generate(samples, SamplingParams(max_new_tokens=5, temperature=1.5, n=4, seed=3))
    assert [len(g) for g in groups] == [4, 4]
    assert sum(calls) == 2  # each prompt's images run once, not once per completion
    assert len(calls) <= 2 + 4  # then both groups decode together: one forward per new token
    again = gen.generate(samples, SamplingParams(max_new_tokens=5, temperature=1.5, n=4, seed=3))
    assert [[c.ids.tolist() for c in g] for g in again] == [[c.ids.tolist() for c in g] for g in groups]
