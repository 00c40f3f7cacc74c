"""Run logging: ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard,
plus phase timers for the engines' named phases."""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _scalar(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; absent is honest
    return v


def json_safe(value: Any) -> Any:
    """Tensors to numbers and NaN/inf to None, recursively, so the result is valid JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return _scalar(value)


class MetricsLogger:
    """Appends to ``run_dir/metrics.jsonl`` and mirrors numbers to ``run_dir/tb``."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        row = json_safe({"step": step, **metrics})
        if not self.enabled:
            return row
        self._file.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
        return row

    def log_text(self, step: int, tag: str, text: str) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(tag, text, step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


class PhaseTimer:
    """Wall time per named phase (``gen``, ``reward``, ``update``...), reset each step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self.seconds.items()}
        self.seconds = {}
        return out


class ComputeMeter:
    """Compute accounting for a run (this process): wall time, tokens, an estimate of FLOPs
    and peak memory. Training tokens count 6 x parameters each (forward + backward, Kaplan et
    al. 2020; an upper bound under LoRA, where frozen weights get no weight gradients);
    forward-only tokens (generation, old/reference log-probs) count 2 x parameters."""

    def __init__(self, n_params: int):
        self.n_params = n_params
        self.start = time.perf_counter()
        self.train_tokens = 0
        self.forward_tokens = 0

    def add_train(self, tokens: int) -> None:
        self.train_tokens += int(tokens)

    def add_forward(self, tokens: int) -> None:
        self.forward_tokens += int(tokens)

    def summary(self) -> dict[str, Any]:
        import resource

        import torch

        flops = 6 * self.n_params * self.train_tokens + 2 * self.n_params * self.forward_tokens
        out = {"wall_seconds": round(time.perf_counter() - self.start, 2), "train_tokens": self.train_tokens,
               "forward_tokens": self.forward_tokens, "flops_estimate": float(flops),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        if torch.cuda.is_available():
            out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return out
