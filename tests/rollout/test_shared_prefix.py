"""The shared-prefix path (prompt and images once per group, completions on its repeated KV
cache) gives the same log-probabilities and gradients as the padded path, for every family."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmtune.data.sample import Sample
from vlmtune.models.families import FAMILIES, list_families
from vlmtune.batching.render import render_prompt
from vlmtune.rollout.generator import SamplingParams
from vlmtune.rollout.hf import HFGenerator, completion_logps, group_inputs, sample_groups, shared_prefix_logps


def prompt_sample() -> Sample:
    return Sample(messages=[{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What colour is the square on the left?"}]}],
        images=[Image.new("RGB", (168, 168), (30, 60, 200))])


@pytest.mark.parametrize("family", list_families())
def test_same_logps_and_gradients_as_padded_path(family, tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_model_dir(family)
    model, processor = AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)
    torch.manual_seed(0)
    gen = HFGenerator(model, processor, batch_size=1)
    [rollout] = sample_groups(gen, [prompt_sample()], SamplingParams(max_new_tokens=6, temperature=1.5, n=3),
                              lambda s: render_prompt(s, processor), gen.pad_id)
    mask = rollout.mask.bool()
    results = []
    for shared in (False, True):
        model.zero_grad()
        if shared:
            logp, entropy = shared_prefix_logps(model, rollout, FAMILIES[family].position_style, True, 0.7)
        else:
            logp, entropy = completion_logps(model, group_inputs(rollout, gen.pad_id, FAMILIES[family].token_keys),
                                             rollout.prompt["input_ids"].shape[1], rollout.completion_ids, True, 0.7)
        logp[mask].sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logp.detach(), entropy, grads))
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = results
    torch.testing.assert_close(lp_b[mask], lp_a[mask], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ent_b[mask], ent_a[mask], atol=2e-5, rtol=1e-4)
    assert g_a.keys() == g_b.keys() and any("visual" in n or "vision" in n for n in g_a)
    for name in g_a:  # float32 rounding grows with a gradient's scale (Gemma3's projector's reach 1e5)
        scale = max(1.0, g_a[name].abs().max().item())
        torch.testing.assert_close(g_b[name], g_a[name], atol=1e-4 * scale, rtol=1e-3, msg=name)
