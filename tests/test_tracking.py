"""Compute accounting and JSON-safe metrics."""

from __future__ import annotations

import math

import torch

from vlmtune.tracking import ComputeMeter, json_safe


def test_flops_estimate_by_hand():
    meter = ComputeMeter(n_params=1000)
    meter.add_train(10)
    meter.add_forward(5)
    s = meter.summary()
    assert s["flops_estimate"] == 6 * 1000 * 10 + 2 * 1000 * 5
    assert s["train_tokens"] == 10 and s["forward_tokens"] == 5 and s["peak_rss_mb"] > 0


def test_json_safe():
    assert json_safe({"a": torch.tensor(1.5), "b": [float("nan"), math.inf], "c": (1, "x")}) == \
        {"a": 1.5, "b": [None, None], "c": [1, "x"]}
