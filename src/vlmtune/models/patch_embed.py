"""Run Qwen-style vision patch embeddings as the matrix product they are.

Qwen2-VL, Qwen2.5-VL, Qwen3-VL and GLM-4V cut the image into patches in the processor and
embed each row of ``pixel_values`` (one flattened patch) with an ``nn.Conv3d`` whose kernel
equals its stride: the convolution sees exactly one patch, so it *is* ``x @ W.T`` with the
weight flattened. PyTorch does not know that and runs a general 3-D convolution, which is
slow on CPU (and on some GPU/cuDNN/dtype combinations): for the 64 images of a demo batch
the patch embedding's forward + backward took 87 ms as a convolution and 29 ms as a matrix
product (2 CPU cores), with the same loss and gradients equal to 5e-8.

Written by hand because transformers' own switch for this (``from_pretrained(...,
fusion_config={"patch_embeddings": True})``, 5.24) renames the weight to ``linear_proj``
and, measured here, loads it as *missing* (re-initialised) from an ordinary checkpoint and
keeps the replacement class for later loads in the same process. This module only swaps
the instance's ``forward``: the ``proj`` weight, state dict, checkpoints and adapters stay
exactly as the family defines them.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def _embeds_whole_patches(conv: nn.Conv3d) -> bool:
    return (conv.stride == conv.kernel_size and conv.padding == (0, 0, 0)
            and conv.dilation == (1, 1, 1) and conv.groups == 1)


def _patches_times_weight(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    proj = self.proj
    if not isinstance(proj, nn.Conv3d):  # wrapped since (e.g. a LoRA layer): keep its own path
        return type(self).forward(self, hidden_states)
    weight = proj.weight.reshape(proj.out_channels, -1)
    return F.linear(hidden_states.reshape(-1, weight.shape[1]).to(weight.dtype), weight, proj.bias)


def patch_embed_as_linear(model: nn.Module) -> int:
    """Make every ``*PatchEmbed`` module of ``model`` whose ``proj`` is a Conv3d over whole,
    non-overlapping patches run as one matrix product; returns how many were switched
    (0 for families that embed patches differently, which are left as they are)."""
    switched = 0
    for module in model.modules():
        proj = getattr(module, "proj", None)
        if (type(module).__name__.endswith("PatchEmbed") and isinstance(proj, nn.Conv3d)
                and _embeds_whole_patches(proj)):
            module.forward = types.MethodType(_patches_times_weight, module)
            switched += 1
    return switched
