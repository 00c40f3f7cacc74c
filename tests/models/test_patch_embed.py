"""Patch embeddings run as a matrix product: same outputs, gradients, weights and checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch

from vlmtune.models.patch_embed import patch_embed_as_linear


def _load(path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)


def _patch_embed(model):
    return next(m for m in model.modules() if type(m).__name__.endswith("PatchEmbed"))


def _forward_and_grad(embed, pixels):
    embed.zero_grad()
    out = embed(pixels)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), [p.grad.clone() for p in embed.parameters()]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_matrix_product_equals_the_convolution(tiny_model_dir, family):
    model = _load(tiny_model_dir(family))
    embed = _patch_embed(model)
    width = embed.proj.weight[0].numel()
    pixels = torch.randn(10, width, generator=torch.Generator().manual_seed(0))
    before, grads_before = _forward_and_grad(embed, pixels)
    keys = list(model.state_dict())

    assert patch_embed_as_linear(model) == 1
    after, grads_after = _forward_and_grad(embed, pixels)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_after, grads_before):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert list(model.state_dict()) == keys  # the same weight, under the same name
    assert after.shape == (10, embed.proj.out_channels)


@pytest.mark.parametrize("family", ["internvl", "idefics3", "llava", "gemma3"])
def test_other_families_are_left_alone(tiny_model_dir, family):
    model = _load(tiny_model_dir(family))
    assert patch_embed_as_linear(model) == 0


def test_checkpoints_load_without_the_switch(tiny_model_dir, tmp_path):
    model = _load(tiny_model_dir("qwen2_vl"))
    patch_embed_as_linear(model)
    with torch.no_grad():
        _patch_embed(model).proj.weight.mul_(2)  # something to find again
    model.save_pretrained(tmp_path)
    plain = _load(tmp_path)
    assert "forward" not in vars(_patch_embed(plain))
    torch.testing.assert_close(_patch_embed(plain).proj.weight, _patch_embed(model).proj.weight)


def test_a_deep_copy_runs_its_own_weight(tiny_model_dir):
    model = _load(tiny_model_dir("qwen2_vl"))
    patch_embed_as_linear(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        _patch_embed(twin).proj.weight.zero_()
    pixels = torch.randn(4, _patch_embed(model).proj.weight[0].numel())
    assert _patch_embed(twin)(pixels).abs().max() == 0
    assert _patch_embed(model)(pixels).abs().max() > 0


def test_a_lora_wrapped_projection_keeps_its_adapter(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model = _load(tiny_model_dir("qwen2_vl"))
    patch_embed_as_linear(model)
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["patch_embed.proj"], init_lora_weights=False))
    embed = _patch_embed(model)
    pixels = torch.randn(4, embed.proj.base_layer.weight[0].numel())
    with torch.no_grad():
        with_adapter = embed(pixels)
        reference = type(embed).forward(embed, pixels)  # the family's own path through the LoRA layer
        base_only = torch.nn.functional.linear(pixels, embed.proj.base_layer.weight.flatten(1))
    torch.testing.assert_close(with_adapter, reference)
    assert not torch.allclose(with_adapter, base_only)


@pytest.mark.parametrize("switch", [True, False])
def test_loading_switches_unless_the_recipe_says_no(tiny_model_dir, switch):
    from vlmtune.config import load_recipe
    from vlmtune.models.loading import load_for_training

    recipe = load_recipe(None, [f"model.path={tiny_model_dir('qwen2_vl')}", "train.mode=full",
                                f"model.linear_patch_embed={str(switch).lower()}"])
    loaded = load_for_training(recipe.model, "full", recipe.lora, recipe.quant, recipe.freeze)
    assert ("forward" in vars(_patch_embed(loaded.model))) is switch
