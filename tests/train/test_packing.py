"""Padding-free packing: the row layout and positions against hand-computed values, and
packed rows against padded batches on the tiny models of every family (loss, gradients,
attention kept within each sample, the SFT engine's losses)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlmtune.batching.collate import collate
from vlmtune.batching.packing import pack, packed_batches, sample_rows
from vlmtune.batching.render import IGNORE, render
from vlmtune.config import load_recipe
from vlmtune.data.sample import Sample
from vlmtune.models.families import get_family, list_families
from vlmtune.models.packing import PACKED_SDPA, packed_position_ids, segment_bounds, text_positions, use_packed_attention
from vlmtune.train.sft import label_tokens, model_batches, packing_off_reason, summed_token_loss

pytestmark = pytest.mark.timeout(300)
PACKS = [f for f in list_families() if not get_family(f).packing_blocker]


def test_sample_rows_fill_up_to_the_budget_in_order():
    assert sample_rows([3, 4, 2, 5], None) == [[0, 1, 2, 3]]
    assert sample_rows([3, 4, 2, 5], 7) == [[0, 1], [2, 3]]
    assert sample_rows([3, 4, 2, 5], 6) == [[0], [1, 2], [3]]
    assert sample_rows([9, 1], 4) == [[0], [1]]  # too long for the budget: a row of its own


def test_pack_lays_samples_end_to_end_and_clears_each_first_label():
    a = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
         "labels": torch.tensor([[5, 6, 7]]), "mm_token_type_ids": torch.tensor([[0, 1, 0]]),
         "pixel_values": torch.ones(4, 2), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    b = {"input_ids": torch.tensor([[8, 9]]), "attention_mask": torch.ones(1, 2, dtype=torch.long),
         "labels": torch.tensor([[8, 9]]), "mm_token_type_ids": torch.tensor([[0, 0]])}
    c = {**a, "pixel_values": torch.zeros(8, 2), "image_grid_thw": torch.tensor([[1, 2, 4]])}
    row = pack([a, b, c], get_family("qwen2_vl").token_keys)
    assert row["input_ids"].tolist() == [[5, 6, 7, 8, 9, 5, 6, 7]]
    assert row["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9, IGNORE, 6, 7]]
    assert row["mm_token_type_ids"].tolist() == [[0, 1, 0, 0, 0, 0, 1, 0]]
    assert row["seq_lengths"].tolist() == [3, 2, 3]
    assert "attention_mask" not in row
    assert row["pixel_values"].shape == (12, 2) and row["pixel_values"][:4].eq(1).all()  # images in sample order
    assert row["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 4]]
    assert a["labels"].tolist() == [[5, 6, 7]]  # the samples themselves are left alone
    rows = packed_batches([a, b, c], get_family("qwen2_vl").token_keys, max_tokens=5)
    assert [r["seq_lengths"].tolist() for r in rows] == [[3, 2], [3]]


def test_text_positions_restart_per_sample():
    assert text_positions([3, 1, 2]).tolist() == [[0, 1, 2, 0, 0, 1]]


def test_segment_bounds_read_the_restarts():
    assert segment_bounds(text_positions([3, 1, 2]), 6) == [0, 3, 4, 6]
    assert segment_bounds(torch.tensor([[4, 5, 6, 0, 1]]), 5) == [0, 3, 5]  # any break, as transformers reads it
    assert segment_bounds(torch.arange(5).unsqueeze(0), 5) is None  # one sample: plain SDPA
    assert segment_bounds(text_positions([2, 2]).expand(2, -1), 4) is None  # a batch of rows, not one packed row
    assert segment_bounds(None, 4) is None


def _samples() -> list[Sample]:
    """Different image counts and sizes (so different grids and image-token runs), answers of
    different lengths, one sample without an image."""
    def text(t):
        return [{"type": "text", "text": t}]

    out = []
    for k, (width, height, n_images) in enumerate([(84, 84, 1), (112, 56, 2), (56, 140, 1), (0, 0, 0)]):
        images = [Image.new("RGB", (width + 14 * j, height), (60 * k, 100, 200 - 40 * j)) for j in range(n_images)]
        out.append(Sample(messages=[
            {"role": "user", "content": [*([{"type": "image"}] * n_images), *text(f"What is in picture {k}?")]},
            {"role": "assistant", "content": text("It shows " + "a red square and " * (1 + 3 * k) + "more.")}],
            images=images))
    return out


def _load(family, tiny_model_dir):
    from vlmtune.models.loading import load_for_inference

    loaded = load_for_inference(tiny_model_dir(family))
    loaded.model.train()
    # loss on every token, so a sample's first token would carry a label if packing forgot to clear it
    items = [render(s, loaded.processor, family=loaded.family, loss_on="all") for s in _samples()]
    return loaded, items


def _loss_and_grads(model, batches):
    model.zero_grad()
    tokens = sum(label_tokens(b) for b in batches)
    loss = sum(summed_token_loss(model, b) for b in batches) / tokens
    loss.backward()
    return loss.detach(), tokens, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", PACKS)
def test_packed_rows_give_the_padded_loss_and_gradients(family, tiny_model_dir):
    loaded, items = _load(family, tiny_model_dir)
    model, fam, pad = loaded.model, loaded.family, loaded.tokenizer.pad_token_id or 0
    padded = _loss_and_grads(model, model_batches(items, model, fam, pad, torch.device("cpu"), packing=False))
    one_row = model_batches(items, model, fam, pad, torch.device("cpu"), packing=True)
    assert len(one_row) == 1 and "attention_mask" not in one_row[0]
    n = [item["input_ids"].shape[1] for item in items]
    two_rows = model_batches(items, model, fam, pad, torch.device("cpu"), packing=True,
                             max_tokens=max(n[0] + n[1], n[2] + n[3]))
    assert [row["input_ids"].shape[1] for row in two_rows] == [n[0] + n[1], n[2] + n[3]]
    runs = [(one_row, "sdpa"), (two_rows, "sdpa"), (one_row, PACKED_SDPA)]
    for batches, attention in runs:
        if attention == PACKED_SDPA:
            assert use_packed_attention(model) and model.config.get_text_config()._attn_implementation == attention
        loss, tokens, grads = _loss_and_grads(model, batches)
        assert tokens == padded[1]  # the same label tokens
        torch.testing.assert_close(loss, padded[0], rtol=1e-5, atol=1e-5)
        assert grads.keys() == padded[2].keys()
        scale = max(float(g.abs().max()) for g in padded[2].values())
        for name, grad in grads.items():  # relative to the largest gradient: many are ~0 (e.g. key biases)
            torch.testing.assert_close(grad / scale, padded[2][name] / scale, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_a_packed_sample_never_sees_another(family, tiny_model_dir):
    """Replace the middle sample of a row by another (other words, another image): the other
    samples' logits stay as they were (within float noise), the replaced sample's do not."""
    loaded, items = _load(family, tiny_model_dir)
    model, fam = loaded.model.eval(), loaded.family
    other = _samples()[1]
    other.messages[1]["content"][0]["text"] = "Nothing but a blue circle."
    other.images = [Image.new("RGB", im.size, (250, 250, 0)) for im in other.images]
    changed = render(other, loaded.processor, family=fam, loss_on="all")

    def logits(samples):
        (row,) = model_batches(samples, model, fam, 0, torch.device("cpu"), packing=True)
        with torch.no_grad():
            out = model(**{k: v for k, v in row.items() if k != "labels"}, use_cache=False).logits[0]
        return out.split([s["input_ids"].shape[1] for s in samples])

    before, after = logits(items[:3]), logits([items[0], changed, items[2]])
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(after[2], before[2], rtol=0, atol=1e-5)
    use_packed_attention(model)  # the same with SDPA run sample by sample
    before, after = logits(items[:3]), logits([items[0], changed, items[2]])
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(after[2], before[2], rtol=0, atol=1e-5)
    n = min(before[1].shape[0], after[1].shape[0])
    assert (after[1][:n] - before[1][:n]).abs().max() > 1e-2


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_mrope_positions_are_each_samples_own(family, tiny_model_dir):
    """The 3-D positions of each sample in a packed row equal the family's rope index of that
    sample alone; the first row is the plain text position transformers masks by."""
    loaded, items = _load(family, tiny_model_dir)
    inner = loaded.model.model
    row = pack(items, loaded.family.token_keys)
    positions = packed_position_ids(loaded.model, loaded.family, row, row["seq_lengths"])
    assert positions.shape == (4, 1, row["input_ids"].shape[1])
    start = 0
    for item in items:
        n = item["input_ids"].shape[1]
        grids = {"image_grid_thw": item["image_grid_thw"]} if "image_grid_thw" in item else {}
        alone, _ = inner.get_rope_index(item["input_ids"], item["mm_token_type_ids"], **grids)
        assert torch.equal(positions[1:, :, start:start + n], alone)
        assert positions[0, 0, start:start + n].tolist() == list(range(n))
        start += n


def test_a_family_that_cannot_pack_pads_and_says_why(tiny_model_dir, tmp_path):
    """Gemma3's bidirectional image attention is not kept apart per sample under transformers'
    packed mask: its packed loss differs, so SFT pads its rows and says so."""
    loaded, items = _load("gemma3", tiny_model_dir)
    model, fam = loaded.model, loaded.family
    padded = _loss_and_grads(model, model_batches(items, model, fam, 0, torch.device("cpu"), packing=False))[0]
    packed = _loss_and_grads(model, model_batches(items, model, fam, 0, torch.device("cpu"), packing=True))[0]
    assert abs(float(packed - padded)) > 1e-3, "packs correctly now: clear Family.packing_blocker for gemma3"
    assert "gemma3" in packing_off_reason(True, fam) and packing_off_reason(False, fam) is None


def _sft(model, data, out, *overrides):
    from vlmtune.train.sft import run_sft

    r = load_recipe(None, [f"model.path={model}", f"data.train_path={data}", f"output.dir={out}", "train.mode=full",
                           "train.max_steps=3", "train.batch_size=3", "train.lr=1e-3", "train.scheduler=constant",
                           "data.shuffle=false", "train.max_length=512", "data.val_split=0.25", *overrides])
    summary = run_sft(r, show_progress=False)
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, losses


@pytest.mark.parametrize("family", ["qwen2_vl", "gemma3"])
def test_sft_packs_by_default_with_the_padded_runs_losses(family, tiny_model_dir, tmp_path):
    from vlmtune.data.builtin import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "shapes", n=12, seed=1)
    model = tiny_model_dir(family)
    packed, packed_losses = _sft(model, data, tmp_path / "packed")
    padded, padded_losses = _sft(model, data, tmp_path / "padded", "train.packing=false")
    assert padded["packing"] is False and "packing_off" not in padded
    if family == "gemma3":
        assert packed["packing"] is False and "gemma3" in packed["packing_off"]
    else:
        assert packed["packing"] is True
        assert PACKED_SDPA not in (tmp_path / "packed" / "final" / "config.json").read_text()  # plain transformers loads it
        split, split_losses = _sft(model, data, tmp_path / "split", "train.max_tokens_per_batch=64")
        torch.testing.assert_close(split_losses, packed_losses, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed_losses, padded_losses, rtol=1e-4, atol=1e-5)
    assert packed["eval_loss"] == pytest.approx(padded["eval_loss"], rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attention runs on a GPU only")
def test_flash_attention_varlen_gives_the_padded_loss(tiny_model_dir):
    """On a GPU with flash-attn installed, transformers runs a packed row through the
    variable-length kernel (sequence starts read from the restarting positions)."""
    pytest.importorskip("flash_attn")
    from transformers import AutoModelForImageTextToText

    loaded, items = _load("qwen2_vl", tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("qwen2_vl"), dtype=torch.bfloat16,
                                                        attn_implementation="flash_attention_2").cuda()
    fam, device = loaded.family, torch.device("cuda")
    with torch.no_grad():
        padded = sum(summed_token_loss(model, b) for b in model_batches(items, model, fam, 0, device, packing=False))
        packed = sum(summed_token_loss(model, b) for b in model_batches(items, model, fam, 0, device, packing=True))
    torch.testing.assert_close(packed.float(), padded.float(), rtol=2e-2, atol=1e-2)
