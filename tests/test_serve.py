"""`tasc-edge serve` on a tiny real GGUF over loopback HTTP: OpenAI-shaped answers equal to plain
greedy decoding, streaming that adds up to the same text, bounded input refused with the right
status, concurrent clients queued (never sharing the KV cache mid-generation), a load test."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("llama_cpp")

from tasc_edge.decode import GenerateConfig, generate  # noqa: E402
from tasc_edge.runtime.serve import Engine, HttpError, ServeConfig, build_app  # noqa: E402
from tasc_edge.runtime.serve_load import ServerThread, load_test, post  # noqa: E402
from tasc_edge.tasks import load_task  # noqa: E402
from tiny_gguf import write_tiny_gguf  # noqa: E402

PROMPTS = [r.prompt for r in load_task("demo").test[:6]]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("serve") / "tiny.gguf", seed=5)
    engine = Engine(ServeConfig(model=str(path), quant="as-is", task="demo", n_ctx=512, threads=1,
                                max_body=4096, max_tokens_cap=64, queue=32))
    with ServerThread(build_app(engine)) as s:
        yield s, engine
    engine.close()


def plain_text(engine, messages, n):
    b = engine.backend
    with engine.lock:
        g = generate(b, b.chat_messages(messages), None, GenerateConfig(n, stop_tokens=b.stop_tokens))
    return b.detokenize(g.tokens), len(g.tokens)


def test_chat_and_completion_answers_equal_plain_greedy(server):
    s, engine = server
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    status, body = post(f"{s.url}/v1/chat/completions", {"messages": msgs, "max_tokens": 24}, 60)
    assert status == 200 and body["object"] == "chat.completion"
    text, n = plain_text(engine, msgs, 24)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert body["usage"]["completion_tokens"] == n and body["tasc"]["method"] == "tasc-spec"
    status, body = post(f"{s.url}/v1/completions", {"prompt": "the large coffee", "max_tokens": 8}, 60)
    assert status == 200 and body["object"] == "text_completion" and body["usage"]["completion_tokens"] <= 8


def test_streaming_adds_up_to_the_same_text(server):
    s, engine = server
    msgs = [{"role": "user", "content": PROMPTS[1]}]
    req = urllib.request.Request(f"{s.url}/v1/chat/completions", json.dumps(
        {"messages": msgs, "max_tokens": 24, "stream": True}).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        lines = [ln.decode().strip() for ln in r if ln.strip()]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain_text(engine, msgs, 24)[0]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("payload,status,words", [
    (b"{not json", 400, "not UTF-8 JSON"),
    (b"\xff\xfe", 400, "not UTF-8 JSON"),
    (json.dumps({"messages": []}).encode(), 400, "messages"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}).encode(), 400, "temperature"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode(), 413, "limit"),
    (json.dumps({"messages": [{"role": "user", "content": "the " * 600}]}).encode(), 400, "context holds"),
])
def test_bad_requests_get_a_clear_status(server, payload, status, words):
    s, _ = server
    req = urllib.request.Request(f"{s.url}/v1/chat/completions", payload, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    assert e.value.code == status
    assert words in json.loads(e.value.read())["error"]["message"]


def test_concurrent_requests_queue_and_each_gets_its_own_answer(server):
    s, engine = server
    msgs = [[{"role": "user", "content": p}] for p in PROMPTS]
    want = [plain_text(engine, m, 16)[0] for m in msgs]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda m: post(f"{s.url}/v1/chat/completions",
                                           {"messages": m, "max_tokens": 16}, 60), msgs * 3))
    assert [g[0] for g in got] == [200] * 18
    assert [g[1]["choices"][0]["message"]["content"] for g in got] == want * 3


def test_queue_limit_refuses_with_503(server):
    _, engine = server
    waiting, engine.waiting = engine.waiting, engine.cfg.queue
    try:
        with pytest.raises(HttpError) as e:
            engine.admit()
        assert e.value.status == 503
    finally:
        engine.waiting = waiting


def test_load_test_reports_throughput_and_no_errors(server):
    s, _ = server
    r = load_test(s.url, PROMPTS, requests=24, concurrency=4, max_tokens=16, timeout=60)
    assert r.errors == 0 and r.requests == 24 and r.requests_per_s > 0
    assert 0 < r.p50_ms <= r.p95_ms


def test_prefix_cache_serves_a_shared_instruction(server):
    """Two demo requests share their few-shot instruction, a third prompt sits between them:
    the second still has that instruction restored from the prefix cache (usage and /health
    say so) and answers exactly what plain greedy decoding gives."""
    s, engine = server
    first, second = ([{"role": "user", "content": p}] for p in PROMPTS[2:4])
    post(f"{s.url}/v1/chat/completions", {"messages": first, "max_tokens": 8}, 60)
    post(f"{s.url}/v1/completions", {"prompt": "hello two size drink", "max_tokens": 8}, 60)
    status, body = post(f"{s.url}/v1/chat/completions", {"messages": second, "max_tokens": 16}, 60)
    text, _ = plain_text(engine, second, 16)
    assert status == 200 and body["choices"][0]["message"]["content"] == text
    shared = 0
    for a, b in zip(*(engine.backend.chat_messages(m) for m in (first, second))):
        if a != b:
            break
        shared += 1
    assert body["usage"]["cached_prompt_tokens"] >= shared > 16
    with urllib.request.urlopen(f"{s.url}/health", timeout=10) as r:
        health = json.loads(r.read())
    assert health["prefix_cache"]["hits"] >= 1 and health["prefix_cache"]["entries"] >= 2
