"""JudgeClient against real loopback HTTP servers (see conftest.py)."""

import asyncio
import logging
import time

import pytest

from vlmtune.config import JudgeConfig
from vlmtune.rewards.judge import JudgeAborted, JudgeClient, JudgeError
from vlmtune.rewards.parsers import parse_score_tag

pytestmark = pytest.mark.timeout(30)

SECRET = "sk-test-SECRET-0123456789"


def chat_completion(content: str, model: str = "fake") -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def last_user_text(req: dict) -> str:
    msgs = [m for m in req.get("messages", []) if m.get("role") == "user"]
    content = msgs[-1]["content"] if msgs else ""
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)


def ask_one(client, messages):
    """``acomplete`` from a fresh event loop, closing the loop's connections afterwards."""
    async def main():
        async with client:
            return await client.acomplete(messages)

    return asyncio.run(main())


def msgs(text):
    return [{"role": "user", "content": text}]


def cfg(url, **kw):
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 5.0)
    return JudgeConfig(base_url=url, model="fake-judge", **kw)


def echo_score(hit, req):
    """Healthy judge: scores a request by the digit in its text."""
    text = last_user_text(req)
    digit = next((c for c in text if c.isdigit()), "0")
    return 200, chat_completion(f"Reasoning... <score>{digit}</score>"), 0.0


def test_healthy_judge(judge_server):
    fake = judge_server(echo_score)
    client = JudgeClient(cfg(fake.base_url))
    batch = [msgs(f"item {i}") for i in range(5)]
    assert client.complete_many(batch) == [f"Reasoning... <score>{i}</score>" for i in range(5)]
    assert client.judge_scores(batch, parse_score_tag) == [0.0, 1.0, 2.0, 3.0, 4.0]
    req = fake.requests[0]
    assert req["model"] == "fake-judge" and req["temperature"] == 0.0 and req["max_tokens"] == 256
    assert sorted(last_user_text(r) for r in fake.requests[:5]) == [f"item {i}" for i in range(5)]
    s = client.stats
    assert s["requests"] == 10 and s["failures"] == 0 and s["retries"] == 0
    assert fake.auth_headers[0] is None  # no key configured -> no header


def test_acomplete_inside_user_loop(judge_server):
    fake = judge_server(echo_score)
    client = JudgeClient(cfg(fake.base_url))

    async def main():
        a, b = await asyncio.gather(client.acomplete(msgs("7")), client.acomplete(msgs("8")))
        sync_from_loop = client.complete_many([msgs("9")])  # sync API while a loop runs
        await client.aclose()
        return a, b, sync_from_loop

    a, b, c = asyncio.run(main())
    assert "<score>7</score>" in a and "<score>8</score>" in b and "<score>9</score>" in c[0]


def test_timeout_is_retried_then_counted(judge_server):
    fake = judge_server(lambda hit, req: (200, chat_completion("<score>1</score>"), 2.0))
    client = JudgeClient(cfg(fake.base_url, timeout_s=0.3, retries=1))
    t0 = time.monotonic()
    assert client.judge_scores([msgs("x")], parse_score_tag) == [None]
    assert time.monotonic() - t0 < 1.5
    s = client.stats
    assert s["fail_timeout"] == 1 and s["requests"] == 2 and s["retries"] == 1 and s["failures"] == 1


def test_5xx_then_success_retries_are_counted(judge_server):
    def flaky(hit, req):
        if hit <= 2:
            return 500, {"error": "overloaded"}, 0.0
        return 200, chat_completion("<score>3</score>"), 0.0

    fake = judge_server(flaky)
    client = JudgeClient(cfg(fake.base_url, retries=3))
    assert client.judge_scores([msgs("x")], parse_score_tag) == [3.0]
    s = client.stats
    assert fake.hits == 3 and s["requests"] == 3 and s["retries"] == 2 and s["failures"] == 0


def test_429_is_retried_but_other_4xx_is_not(judge_server):
    fake429 = judge_server(lambda hit, req: (429, {"error": "slow down"}, 0.0) if hit == 1
                           else (200, chat_completion("<score>2</score>"), 0.0))
    client = JudgeClient(cfg(fake429.base_url, retries=2))
    assert client.judge_scores([msgs("x")], parse_score_tag) == [2.0]
    assert client.stats["retries"] == 1

    fake400 = judge_server(lambda hit, req: (400, {"error": "bad request"}, 0.0))
    client = JudgeClient(cfg(fake400.base_url, retries=3))
    assert client.judge_scores([msgs("x")], parse_score_tag) == [None]
    s = client.stats
    assert fake400.hits == 1 and s["retries"] == 0 and s["fail_http_4xx"] == 1


def test_5xx_exhausted(judge_server):
    fake = judge_server(lambda hit, req: (503, "down", 0.0))
    client = JudgeClient(cfg(fake.base_url, retries=2))
    with pytest.raises(JudgeError, match="http_5xx") as err:
        ask_one(client, msgs("x"))
    assert err.value.kind == "http_5xx"
    assert fake.hits == 3 and client.stats["fail_http_5xx"] == 1


def test_garbage_replies_are_parse_failures_and_policy_applies(judge_server):
    def garbage(hit, req):
        text = last_user_text(req)
        if text == "not-json":
            return 200, "<html>oops</html>", 0.0
        if text == "no-choices":
            return 200, {"object": "error"}, 0.0
        if text == "good":
            return 200, chat_completion("<score>4</score>"), 0.0
        return 200, chat_completion("I like it a lot!"), 0.0  # unparseable verdict

    fake = judge_server(garbage)
    batch = [msgs("not-json"), msgs("no-choices"), msgs("prose"), msgs("good")]
    none = JudgeClient(cfg(fake.base_url))
    assert none.judge_scores(batch, parse_score_tag) == [None, None, None, 4.0]
    assert none.stats["fail_parse"] == 3 and none.stats["retries"] == 0
    default = JudgeClient(cfg(fake.base_url, on_failure="default", default_score=-1.0))
    assert default.judge_scores(batch, parse_score_tag) == [-1.0, -1.0, -1.0, 4.0]
    # composite rewards ask for raw None and apply the default to their final value
    assert default.judge_scores(batch, parse_score_tag, use_default=False) == [None, None, None, 4.0]
    assert default.failure_reward() == -1.0 and none.failure_reward() is None


def test_dead_port_is_a_connection_failure(dead_url, caplog):
    client = JudgeClient(cfg(dead_url, retries=2))
    with caplog.at_level(logging.WARNING):
        assert client.judge_scores([msgs("a"), msgs("b")], parse_score_tag) == [None, None]
    s = client.stats
    assert s["fail_connection"] == 2 and s["retries"] == 4 and s["requests"] == 6
    assert "2/2 judgements failed" in caplog.text and "connection" in caplog.text


def test_abort_after_consecutive_failures(judge_server):
    def script(hit, req):
        ok = last_user_text(req).startswith("ok")
        return 200, chat_completion("<score>1</score>" if ok else "???"), 0.0

    fake = judge_server(script)
    client = JudgeClient(cfg(fake.base_url, on_failure="abort", abort_after=3))
    # two failures, a success (resets the streak), two failures: no abort yet
    assert client.judge_scores([msgs("x1"), msgs("x2"), msgs("ok1"), msgs("x3"), msgs("x4")],
                               parse_score_tag) == [None, None, 1.0, None, None]
    with pytest.raises(JudgeAborted, match="3 times in a row"):
        client.judge_scores([msgs("x5")], parse_score_tag)


def test_cache_second_run_sends_nothing_and_persists(judge_server, tmp_path):
    fake = judge_server(echo_score)
    path = tmp_path / "cache" / "judge.sqlite"
    batch = [msgs(f"q{i}") for i in range(4)]
    first = JudgeClient(cfg(fake.base_url, cache_path=str(path)))
    scores = first.judge_scores(batch, parse_score_tag)
    assert fake.hits == 4
    assert first.judge_scores(batch, parse_score_tag) == scores
    assert fake.hits == 4 and first.stats["cache_hits"] == 4
    first.close()

    second = JudgeClient(cfg(fake.base_url, cache_path=str(path)))  # a new process, same file
    assert second.judge_scores(batch, parse_score_tag) == scores
    assert fake.hits == 4 and second.stats == {**second.stats, "requests": 0, "cache_hits": 4}
    # other sampling params are a different question
    hot = JudgeClient(cfg(fake.base_url, cache_path=str(path), temperature=0.7))
    hot.complete_many(batch[:1])
    assert fake.hits == 5


def test_identical_requests_in_one_batch_are_sent_once(judge_server):
    fake = judge_server(lambda hit, req: (200, chat_completion("<score>2</score>"), 0.1))
    client = JudgeClient(cfg(fake.base_url))
    assert client.judge_scores([msgs("same")] * 4, parse_score_tag) == [2.0] * 4
    assert fake.hits == 1


def test_failures_are_not_cached(judge_server, tmp_path):
    fake = judge_server(lambda hit, req: (500, "x", 0.0) if hit == 1
                        else (200, chat_completion("<score>1</score>"), 0.0))
    c = cfg(fake.base_url, retries=0, cache_path=str(tmp_path / "c.sqlite"))
    assert JudgeClient(c).judge_scores([msgs("a")], parse_score_tag) == [None]
    assert JudgeClient(c).judge_scores([msgs("a")], parse_score_tag) == [1.0]


def test_api_key_sent_but_never_leaked(judge_server, monkeypatch, caplog):
    monkeypatch.setenv("VLMTUNE_TEST_JUDGE_KEY", SECRET)
    # a hostile server that echoes the Authorization header back in its error body
    fake = judge_server(lambda hit, req: (401, f"bad key {fake.auth_headers[-1]}", 0.0))
    client = JudgeClient(cfg(fake.base_url, api_key_env="VLMTUNE_TEST_JUDGE_KEY"))
    assert SECRET not in repr(client) and SECRET not in str(client)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(JudgeError) as err:
            ask_one(client, msgs("x"))
        client.judge_scores([msgs("y")], parse_score_tag)
    assert fake.auth_headers[0] == f"Bearer {SECRET}"
    assert SECRET not in str(err.value) and SECRET not in repr(err.value)
    assert "***" in str(err.value)
    assert SECRET not in caplog.text and SECRET not in str(client.stats)


def test_missing_api_key_env_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("VLMTUNE_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="VLMTUNE_NO_SUCH_KEY"):
        JudgeClient(cfg("http://127.0.0.1:9/v1", api_key_env="VLMTUNE_NO_SUCH_KEY"))


def test_concurrency_bound_is_respected(judge_server):
    fake = judge_server(lambda hit, req: (200, chat_completion("<score>1</score>"), 0.15))
    client = JudgeClient(cfg(fake.base_url, concurrency=3))
    t0 = time.monotonic()
    assert client.judge_scores([msgs(f"q{i}") for i in range(9)], parse_score_tag) == [1.0] * 9
    assert fake.max_inflight == 3
    assert time.monotonic() - t0 >= 0.4  # three waves of 0.15 s


def test_cache_is_shared_safely_across_processes(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "shared.sqlite"
    script = ("import sys; from vlmtune.rewards.judge import JudgeCache; c = JudgeCache(sys.argv[1]); "
              "[c.put(f'{sys.argv[2]}-{i}', 'r', 'm') for i in range(200)]")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), tag]) for tag in "ab"]
    assert [p.wait(timeout=20) for p in procs] == [0, 0]
    from vlmtune.rewards.judge import JudgeCache

    cache = JudgeCache(path)
    assert len(cache) == 400 and cache.get("a-7") == "r" and cache.get("zzz") is None
    cache.close()
