"""What every task's demo shares: the tiny demo model, a stage clock, the vision warm-up.

A task's demo (its ``demo`` hook, e.g. :mod:`vlmtune.tasks.clarify.demo`,
:mod:`vlmtune.tasks.sokoban.demo`) builds a tiny Qwen2-VL of its own shape with
:func:`build_demo_model`, may warm its vision tower up on per-token labels
(:func:`warm_up_and_save`, standing in for a pretrained encoder) and times its stages with
:class:`StageClock`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

__all__ = ["PREPASS_PROCS", "ModelShape", "StageClock", "build_demo_model", "save_in_place", "warm_up_and_save"]

PREPASS_PROCS = min(4, os.cpu_count() or 1)  # data.num_proc of a demo's SFT pre-pass


class ModelShape(Protocol):
    """The demo model's shape: what :func:`build_demo_model` reads from a task demo's settings."""

    @property
    def seed(self) -> int: ...
    @property
    def vision_patch(self) -> int | None: ...
    @property
    def vision_depth(self) -> int | None: ...
    @property
    def vision_width(self) -> int | None: ...
    @property
    def text_layers(self) -> int | None: ...


class StageClock:
    """Seconds per demo stage (``timings`` in a demo's summary)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    def mark(self, name: str, since: float) -> float:
        """Record ``name`` as the time since ``since``; returns now (the next stage's start)."""
        self.timings[name] = round(time.perf_counter() - since, 1)
        return time.perf_counter()

    def wall(self) -> float:
        return round(time.perf_counter() - self.start, 1)


def save_in_place(model: Any, model_dir: Path) -> None:
    """Save ``model`` over the weights in ``model_dir`` (the processor files stay)."""
    for f in model_dir.glob("model*.safetensors*"):
        f.unlink()
    model.save_pretrained(model_dir)


def build_demo_model(out: Path, s: ModelShape) -> Path:
    """The factory's tiny Qwen2-VL, reshaped as ``s`` says and re-initialised by seed."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlmtune.models.tiny import make_tiny

    make_tiny("qwen2_vl", out, seed=s.seed)
    if s.vision_patch is None and s.vision_depth is None and s.vision_width is None and s.text_layers is None:
        return out
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    vision, text = cfg["vision_config"], cfg["text_config"]
    if s.vision_patch is not None:
        vision["patch_size"] = s.vision_patch
        _set_processor_patch(out, s.vision_patch)
    if s.vision_depth is not None:
        vision["depth"] = s.vision_depth
    if s.vision_width is not None:
        vision["embed_dim"] = s.vision_width
        vision["num_heads"] = max(1, s.vision_width // 16)
    if s.text_layers is not None:
        text["num_hidden_layers"] = s.text_layers
        text["layer_types"] = ["full_attention"] * s.text_layers
    path.write_text(json.dumps(cfg, indent=2))
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(s.seed)
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(out), dtype=torch.float32)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.do_sample = False
    save_in_place(model, out)
    return out


def warm_up_and_save(model_dir: Path, images: Any, labels: Any, num_classes: tuple[int, ...], *, steps: int,
                     batch_size: int, seed: int, show_progress: bool = True) -> dict[str, Any]:
    """Load the demo model, warm up its vision tower on per-token labels
    (:func:`vlmtune.train.vision_warmup.warm_up_vision`) and save it back in place."""
    import torch

    from vlmtune.models.loading import load_for_inference
    from vlmtune.train.vision_warmup import warm_up_vision

    loaded = load_for_inference(model_dir)  # float32, with the loader's defaults (patch embedding)
    torch.manual_seed(seed)
    result = warm_up_vision(loaded.model, loaded.processor, images, labels, num_classes, steps=steps,
                            batch_size=batch_size, seed=seed, show_progress=show_progress)
    save_in_place(loaded.model, model_dir)
    return result


def _set_processor_patch(model_dir: Path, patch: int) -> None:
    """Make the saved image/video processors cut ``patch``-px patches (merged 2x2 per token)."""
    path = model_dir / "processor_config.json"
    cfg = json.loads(path.read_text())
    for key in ("image_processor", "video_processor"):
        cfg[key]["patch_size"] = patch
        cfg[key]["size"]["shortest_edge"] = (2 * patch) ** 2  # at least one merged token
    path.write_text(json.dumps(cfg, indent=2))
