"""``vlmtune merge``: fold a LoRA adapter into its base and save a plain transformers model.

The merged directory loads with ``AutoModelForImageTextToText.from_pretrained`` (or
``AutoModelForCausalLM`` for text models) and ``AutoProcessor``, serves with ``vlmtune
serve`` and converts with the usual tools (llama.cpp, vLLM) that do not read adapters.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vlmtune.models.loading import ModelLoadError, is_adapter_dir, load_for_inference


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base_model: str | None = None,
                  dtype: str = "float32") -> Path:
    """Merge ``adapter_dir`` into its base (from adapter_config.json, or ``base_model``)."""
    if not is_adapter_dir(adapter_dir):
        raise ModelLoadError(f"{adapter_dir} is not a PEFT adapter (no adapter_config.json); nothing to merge")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new output directory")
    loaded = load_for_inference(adapter_dir, base_model, dtype=dtype, merge=True)
    with torch.no_grad():
        loaded.model.save_pretrained(str(out), safe_serialization=True)
    loaded.processor.save_pretrained(str(out))
    return out


def add_merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", help="adapter directory (e.g. RUN/final)")
    p.add_argument("out", help="output directory for the merged model (new or empty)")
    p.add_argument("--base-model", help="base model directory when the adapter's recorded path moved")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the merged weights")


def cmd_merge(args: argparse.Namespace) -> int:
    out = merge_adapter(args.adapter, args.out, args.base_model, args.dtype)
    print(f"merged {args.adapter} into {out}")
    return 0
