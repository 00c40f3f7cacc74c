"""The one generation interface: backends by registry name or file, the hf backend's
completions (ids up to and including the end token, text, finish reason), n completions per
prompt across a batch of prompts, greedy n decoded once, stop strings, and GRPO's groups built
from completions."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmtune.batching.render import render_prompt
from vlmtune.data.sample import Sample
from vlmtune.registry import RegistryError
from vlmtune.rollout.generator import Completion, SamplingParams, build_generator
from vlmtune.rollout.hf import HFGenerator, Rollout, sample_groups

pytestmark = pytest.mark.timeout(180)


def prompt(colour=(30, 60, 200), text="What colour is the square?") -> Sample:
    return Sample(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
                  images=[Image.new("RGB", (168, 168), colour)])


@pytest.fixture(scope="module")
def qwen(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_model_dir("qwen2_vl")
    return AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)


def test_backends_by_name_and_by_file(qwen, tmp_path, monkeypatch):
    model, processor = qwen
    gen = build_generator("hf", model, processor, batch_size=3)
    assert isinstance(gen, HFGenerator) and gen.batch_size == 3
    (tmp_path / "echo.py").write_text(
        "import torch\nfrom vlmtune.rollout.generator import Completion\n\n"
        "class Echo:\n    def __init__(self, model, processor, *, system_prompt=None, batch_size=8, word='x'):\n"
        "        self.word = word\n\n    def generate(self, samples, params, *, on_batch=None):\n"
        "        return [[Completion(torch.tensor([1]), self.word, 'stop')] * params.n for _ in samples]\n\n"
        "class NoGenerate:\n    def __init__(self, *args, **kwargs):\n        pass\n")
    monkeypatch.chdir(tmp_path)
    echo = build_generator("echo.py:Echo", model, processor, options={"word": "hi"})
    assert [[c.text for c in g] for g in echo.generate([prompt(), prompt()], SamplingParams(n=2))] == [["hi"] * 2] * 2
    with pytest.raises(TypeError, match="has no generate"):
        build_generator("echo.py:NoGenerate", model, processor)
    with pytest.raises(RegistryError, match="did you mean 'hf'"):
        build_generator("hff", model, processor)


def test_n_completions_of_each_prompt_in_one_batch(qwen):
    model, processor = qwen
    gen = HFGenerator(model, processor, batch_size=4)
    samples = [prompt(), prompt((200, 30, 30), "Name the colour."), prompt((30, 200, 30))]
    torch.manual_seed(0)
    groups = gen.generate(samples, SamplingParams(max_new_tokens=6, temperature=1.3, n=3))
    assert [len(g) for g in groups] == [3, 3, 3]
    for c in (c for g in groups for c in g):
        assert 1 <= c.tokens <= 6 and c.ids.dtype == torch.long
        ends = [i for i, t in enumerate(c.ids.tolist()) if t in gen.end_ids]
        if c.finish_reason == "stop":  # the end token is the last id, and not text
            assert ends == [c.tokens - 1]
        else:
            assert ends == [] and c.tokens == 6 and c.truncated
    greedy = gen.generate(samples[:1], SamplingParams(max_new_tokens=6, do_sample=False, n=3))[0]
    assert greedy[0] is greedy[1] is greedy[2]  # decoded once


def test_stop_strings_cut_the_text(qwen):
    model, processor = qwen
    gen = HFGenerator(model, processor, strip_text=False)
    [[free]] = gen.generate([prompt()], SamplingParams(max_new_tokens=12, do_sample=False))
    assert len(free.text) > 3  # precondition: a greedy text to cut
    stop = free.text[2:4]
    [[cut]] = gen.generate([prompt()], SamplingParams(max_new_tokens=12, do_sample=False, stop=(stop,)))
    assert cut.finish_reason == "stop" and stop not in cut.text and free.text.startswith(cut.text)
    assert cut.tokens <= free.tokens


def test_groups_from_completions_pad_and_mask():
    sample = prompt()
    done = [Completion(torch.tensor([5, 6, 9]), "a", "stop"), Completion(torch.tensor([7]), "b", "stop"),
            Completion(torch.tensor([8, 8, 8, 8]), "c", "length")]
    r = Rollout.of(sample, {"input_ids": torch.ones(1, 2, dtype=torch.long)}, done, pad_id=0)
    assert r.completion_ids.tolist() == [[5, 6, 9, 0], [7, 0, 0, 0], [8, 8, 8, 8]]
    assert r.mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert (r.texts, r.truncated) == (["a", "b", "c"], [False, False, True])


def test_grpo_groups_carry_the_prompt_the_backend_saw(qwen):
    model, processor = qwen
    gen = HFGenerator(model, processor, batch_size=2)
    samples = [prompt(), prompt((200, 30, 30))]
    [a, b] = sample_groups(gen, samples, SamplingParams(max_new_tokens=4, n=2),
                           lambda s: render_prompt(s, processor), gen.pad_id)
    assert a.completion_ids.shape[0] == b.completion_ids.shape[0] == 2
    one = gen.encode(samples[:1])
    assert torch.equal(a.prompt["input_ids"], one["input_ids"])
    assert torch.equal(a.prompt["pixel_values"], one["pixel_values"])
