"""End to end: ``python -m vlmtune.serve`` (a real subprocess serving SmolLM2-135M-Instruct from
its GGUF file, behind an API key) used as the LLM judge by :class:`vlmtune.rewards.judge.JudgeClient`.

The test checks the mechanism, not the 135M model's judgement: requests are sent and
answered, every score is a float or None, every None is counted as a failure, and a
second client sharing the SQLite cache sends nothing (seen from its own stats and from
the server's request counters)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(300)

KEY_ENV = "VLMTUNE_E2E_JUDGE_KEY"
KEY = "sk-e2e-judge-5c8d1a7f3e9b"


class Served:
    def __init__(self, url: str, log: Path):
        self.url, self.log = url, log

    def stats(self) -> dict:
        r = httpx.get(f"{self.url}/v1/stats", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        r.raise_for_status()
        return r.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_gguf, free_port) -> Iterator[Served]:
    d = smollm2_gguf.parent
    log = tmp_path_factory.mktemp("serve") / "server.log"
    port = free_port()
    env = {**os.environ, KEY_ENV: KEY, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "vlmtune.serve", str(d), "--gguf-file", smollm2_gguf.name, "--port", str(port),
           "--model-name", "smollm2", "--api-key-env", KEY_ENV, "--max-tokens-limit", "64", "--threads", "1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vlmtune serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"vlmtune serve not healthy within 180 s:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        yield Served(url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


QUESTIONS = [("What is 2 + 2?", "4"), ("What is the capital of France?", "Paris"),
             ("What colour is the sky on a clear day?", "green")]


def judge_prompt(question: str, answer: str) -> list[dict]:
    return [{"role": "system", "content": "You grade answers. Reply only with <score>N</score>, "
                                          "N from 0 (wrong) to 10 (right)."},
            {"role": "user", "content": f"Question: {question}\nAnswer: {answer}\nScore:"}]


def test_serve_as_judge_with_cache(server, tmp_path, monkeypatch):
    from vlmtune.config import JudgeConfig
    from vlmtune.rewards.judge import JudgeClient
    from vlmtune.rewards.parsers import parse_score_tag

    monkeypatch.setenv(KEY_ENV, KEY)
    cfg = JudgeConfig(base_url=f"{server.url}/v1", model="smollm2", api_key_env=KEY_ENV,
                      cache_path=str(tmp_path / "judge.sqlite"), concurrency=2, timeout_s=120,
                      retries=0, temperature=0.0, max_tokens=24, on_failure="none")
    batch = [judge_prompt(q, a) for q, a in QUESTIONS]
    before = server.stats()["chat_completions"]

    first = JudgeClient(cfg)
    try:
        scores = first.judge_scores(batch, parse_score_tag)
        replies = first.complete_many(batch)  # served from the cache now
        s1 = first.stats
    finally:
        first.close()
    assert len(scores) == 3 and all(s is None or isinstance(s, float) for s in scores)
    assert all(isinstance(r, str) for r in replies)  # every request was answered
    assert s1["requests"] == 3 and s1["cache_hits"] == 3
    assert s1["failures"] == s1["fail_parse"] == sum(s is None for s in scores)  # Nones are counted
    mid = server.stats()["chat_completions"]
    assert (mid["received"] - before["received"], mid["ok"] - before["ok"]) == (3, 3)

    second = JudgeClient(cfg)
    try:
        again = second.judge_scores(batch, parse_score_tag)
        s2 = second.stats
    finally:
        second.close()
    assert again == scores
    assert s2["requests"] == 0 and s2["cache_hits"] == 3
    assert server.stats()["chat_completions"]["received"] == mid["received"]  # nothing reached the server

    # deterministic greedy judge: asking again without the cache gives the same replies
    direct = [httpx.post(f"{server.url}/v1/chat/completions", timeout=120,
                         headers={"Authorization": f"Bearer {KEY}"},
                         json={"model": "smollm2", "messages": m, "temperature": 0, "max_tokens": 24}
                         ).json()["choices"][0]["message"]["content"] for m in batch]
    assert direct == replies

    log = server.log.read_text()
    assert "POST /v1/chat/completions" in log  # the access log is there ...
    assert KEY not in log  # ... and never shows the key
