"""The server's counters (``GET /v1/stats``): requests by path and status, generation load,
work dropped because its client went away, answers per served model, and weight changes
(adapters loaded and unloaded, full reloads). Updated from the event loop and from worker
threads, so every change happens under :attr:`Stats.lock`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

PATHS = ("/health", "/v1/models", "/v1/chat/completions", "/v1/stats", "/v1/load_lora_adapter",
         "/v1/unload_lora_adapter", "/update_weights_from_disk")


@dataclass
class Counters:
    started: float = field(default_factory=time.time)
    requests_total: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    chat_received: int = 0
    chat_ok: int = 0
    chat_client_errors: int = 0
    chat_server_errors: int = 0
    generate_calls: int = 0
    in_flight: int = 0
    queued: int = 0
    max_queued: int = 0
    max_in_flight: int = 0
    dropped_queued: int = 0  # client gone while waiting: never generated
    stopped_running: int = 0  # client gone while generating: stopped at the next token
    prompt_tokens: int = 0
    completion_tokens: int = 0
    served_by_model: dict[str, int] = field(default_factory=dict)  # chat completions answered
    adapter_loads: int = 0  # an adapter loaded, or replaced in place
    adapter_unloads: int = 0
    weight_reloads: int = 0
    weight_change_failures: int = 0


class Stats:
    def __init__(self, model_name: str, max_concurrency: int, limits: dict[str, Any]):
        self.model_name, self.max_concurrency, self.limits = model_name, max_concurrency, limits
        self.lock = threading.Lock()
        self.c = Counters()

    def request(self, path: str, is_chat: bool) -> None:
        with self.lock:
            self.c.requests_total += 1
            known = path.rstrip("/") if path.rstrip("/") in PATHS else "other"  # bounded keys
            self.c.by_path[known] = self.c.by_path.get(known, 0) + 1
            self.c.chat_received += is_chat

    def response(self, status: int, is_chat: bool) -> None:
        with self.lock:
            self.c.by_status[str(status)] = self.c.by_status.get(str(status), 0) + 1
            if is_chat:
                if status < 300:
                    self.c.chat_ok += 1
                elif status < 500:
                    self.c.chat_client_errors += 1
                else:
                    self.c.chat_server_errors += 1

    def tokens(self, prompt: int, completion: int) -> None:
        with self.lock:
            self.c.prompt_tokens += prompt
            self.c.completion_tokens += completion

    def served(self, model: str) -> None:
        with self.lock:
            self.c.served_by_model[model] = self.c.served_by_model.get(model, 0) + 1

    def weight_change(self, kind: str | None) -> None:
        """``adapter_load``, ``adapter_unload``, ``weight_reload``; None = a failed one."""
        with self.lock:
            name = {"adapter_load": "adapter_loads", "adapter_unload": "adapter_unloads",
                    "weight_reload": "weight_reloads", None: "weight_change_failures"}[kind]
            setattr(self.c, name, getattr(self.c, name) + 1)

    def snapshot(self, adapters: list[str] | None = None) -> dict[str, Any]:
        with self.lock:
            c = self.c
            return {
                "model": self.model_name,
                "uptime_s": round(time.time() - c.started, 3),
                "requests_total": c.requests_total,
                "requests_by_path": dict(c.by_path),
                "responses_by_status": dict(c.by_status),
                "chat_completions": {"received": c.chat_received, "ok": c.chat_ok,
                                     "client_errors": c.chat_client_errors,
                                     "server_errors": c.chat_server_errors},
                "generation": {"calls": c.generate_calls, "in_flight": c.in_flight, "queued": c.queued,
                               "max_queued": c.max_queued, "max_in_flight": c.max_in_flight,
                               "max_concurrency": self.max_concurrency,
                               "dropped_queued": c.dropped_queued, "stopped_running": c.stopped_running,
                               "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens},
                "served_by_model": dict(c.served_by_model),
                "weights": {"adapters_loaded": list(adapters or []), "adapter_loads": c.adapter_loads,
                            "adapter_unloads": c.adapter_unloads, "reloads": c.weight_reloads,
                            "failures": c.weight_change_failures},
                "limits": dict(self.limits),
            }
