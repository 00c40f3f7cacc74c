"""What the benchmarks against TRL share: the issue-17 Qwen2-VL, built offline from the
tiny-model factory's tokenizer and processor (text hidden 512, 6 layers, 8 heads / 4 KV heads,
intermediate 1536, vocab 1,024, mRoPE sections [8, 12, 12]; vision depth 4, width 256, 4
heads, patch 14, merge 2; random weights; image processor min/max pixels 56²/224², written
into the model folder so both tools read the same), and this machine's dense float32 matmul
rate, which achieved FLOP/s are quoted against."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

TEXT = dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
            intermediate_size=1536)
MROPE = [8, 12, 12]
VISION = dict(depth=4, embed_dim=256, num_heads=4, patch_size=14, spatial_merge_size=2)
MIN_PIXELS, MAX_PIXELS = 56 * 56, 224 * 224


def build_model(out: Path, seed: int = 0) -> Path:
    """The tiny factory's Qwen2-VL folder (tokenizer, chat template, processor), reshaped to
    the benchmark's sizes and re-initialised with ``seed``."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlmtune.models.tiny import make_tiny

    make_tiny("qwen2_vl", out, seed=seed)
    cfg = json.loads((out / "config.json").read_text())
    text, vision = cfg["text_config"], cfg["vision_config"]
    text.update(TEXT, layer_types=["full_attention"] * TEXT["num_hidden_layers"])
    text["rope_parameters"]["mrope_section"] = MROPE
    vision.update(VISION, hidden_size=TEXT["hidden_size"])  # the merger's output width = the text width
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    proc = json.loads((out / "processor_config.json").read_text())
    for key in ("image_processor", "video_processor"):
        proc[key]["size"] = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    (out / "processor_config.json").write_text(json.dumps(proc, indent=2))
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(out), dtype=torch.float32)
    for f in out.glob("model*.safetensors*"):
        f.unlink()
    model.save_pretrained(out)
    return out


def full_training(work: Path, data: Path, run_dir: Path, lr: float) -> list[str]:
    """The recipe overrides both vlmtune sides share: the benchmark model, full fine-tuning with
    vision and projector trainable, a constant lr, gradients clipped to norm 1, every step
    logged, no trackers."""
    return [f"model.path={work / 'model'}", f"data.train_path={data}", f"output.dir={run_dir}",
            "output.overwrite=true", "output.report_to=[]", "train.mode=full", "freeze.vision=false",
            "freeze.projector=false", "freeze.language=false", f"train.lr={lr}", "train.scheduler=constant",
            "train.max_grad_norm=1.0", "train.log_every=1"]


def matmul_flops(size: int = 2048, seconds: float = 3.0) -> float:
    """This machine's dense float32 matmul rate (FLOP/s), best of repeated ``torch.mm``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tick = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - tick))
    return best


def fmt_rate(x: float) -> str:
    return f"{x / 1e9:.2f} GFLOP/s"
