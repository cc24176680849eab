"""`lowbit serve`: a real uvicorn process on 127.0.0.1, driven by the official openai client and by
plain HTTP for the error paths; batching equality, client disconnects, a bounded load test."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tiny_models import save_tiny

from lowbit.convert.converter import convert

openai = pytest.importorskip("openai")  # the serve extra; CI installs it with the test extra

KEY = "sk-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, path: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lowbit.cli", "serve", str(path), "--port", str(self.port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.close()
        raise RuntimeError("server did not start")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    folder = save_tiny("llama", root / "hf", seed=3, max_position_embeddings=512)
    return convert(folder, root / "tiny-q4.lowbit", method="q4").path


@pytest.fixture(scope="module")
def server(tiny) -> Iterator[Server]:
    s = Server(tiny, "--api-key", KEY, "--parallel", "4")
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def small(tiny) -> Iterator[Server]:
    """A server with room for 2 requests in flight and 3 waiting: the 429 and load tests."""
    s = Server(tiny, "--parallel", "2", "--queue", "3")
    yield s
    s.close()


def chat(client, content: str, **kw):
    return client.chat.completions.create(model="tiny-q4", messages=[{"role": "user", "content": content}], **kw)


def test_chat_and_completions(client, tiny):
    import lowbit

    llm = lowbit.load(tiny)
    r = chat(client, "Hello there", max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.model == "tiny-q4"
    c = r.choices[0]
    assert c.message.role == "assistant" and c.finish_reason == "length"
    ids = llm.tokenizer.encode_chat([{"role": "user", "content": "Hello there"}], add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 12
    assert r.usage.total_tokens == len(ids) + 12
    assert c.message.content == batched_greedy(llm, ids, 12)  # the greedy text, computed in-process
    p = client.completions.create(model="tiny-q4", prompt="The quick brown fox", max_tokens=9, temperature=0)
    assert p.object == "text_completion" and p.choices[0].finish_reason == "length"
    assert p.choices[0].text == batched_greedy(llm, llm.tokenize("The quick brown fox"), 9)
    assert p.usage.prompt_tokens == len(llm.tokenize("The quick brown fox")) and p.usage.completion_tokens == 9
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-q4"]


def test_streaming_equals_whole(client, server):
    whole = chat(client, "Tell me a story", max_tokens=20, temperature=0)
    chunks = list(chat(client, "Tell me a story", max_tokens=20, temperature=0, stream=True,
                       stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    # the wire format: server-sent events ending in [DONE]
    with httpx.stream("POST", server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"prompt": "abc", "max_tokens": 5, "stream": True}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]" and all(x.startswith("data: ") for x in lines)
    events = [json.loads(x[6:]) for x in lines[:-1]]
    assert events[-1]["choices"][0]["finish_reason"] == "length" and "usage" not in events[-1]


def test_stop_strings(client):
    text = chat(client, "Count for me", max_tokens=30, temperature=0).choices[0].message.content
    stop = text[8:11]
    assert len(stop) == 3
    cut = text[: text.index(stop)]
    for stream in (False, True):
        r = chat(client, "Count for me", max_tokens=30, temperature=0, stop=[stop, "never-there"], stream=stream)
        if stream:
            chunks = list(r)
            got = "".join(ch.choices[0].delta.content or "" for ch in chunks)
            finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices[0].finish_reason]
            assert finish == ["stop"]
        else:
            got = r.choices[0].message.content
            assert r.choices[0].finish_reason == "stop"
        assert got == cut


def test_seed_reproducible(client):
    kw = dict(max_tokens=16, temperature=1.0, top_p=0.95)
    a = chat(client, "Pick words", seed=7, **kw).choices[0].message.content
    b = chat(client, "Pick words", seed=7, **kw).choices[0].message.content
    c = chat(client, "Pick words", seed=8, **kw).choices[0].message.content
    assert a == b and a != c


def test_json_object_always_parses(client):
    prompts = [f"{w} as JSON, please ({i})" for i, w in enumerate(
        ["A person", "Three colours", "The weather", "A recipe", "Nothing", "Prime numbers", "A list of cities",
         "Your name", "A nested object", "Numbers", "An empty answer", "True or false", "A quote \"with\" marks",
         "Unicode: café", "A long description", "A short one", "Key-value pairs", "A matrix", "Null", "Escapes \\n"])]
    for i, p in enumerate(prompts):
        r = chat(client, p, max_tokens=12 + 4 * (i % 5), temperature=[0.0, 0.7, 1.0, 1.5][i % 4], seed=i,
                 response_format={"type": "json_object"})
        out = r.choices[0].message.content
        assert isinstance(json.loads(out), dict), out
        assert r.choices[0].finish_reason == "stop"


def test_logprobs(client):
    r = chat(client, "Hi", max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 8
    for e in content:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and all(t <= 0 for t in tops)
        assert e.token == e.top_logprobs[0].token and e.logprob == tops[0]  # greedy: the best one
    assert b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace") == r.choices[0].message.content
    p = client.completions.create(model="tiny-q4", prompt="abc", max_tokens=4, temperature=0, logprobs=2)
    lp = p.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert lp.text_offset == sorted(lp.text_offset)


BAD = [
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 1.5}, "top_k"),
    ({"min_p": 2}, "min_p"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.1}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"seed": "x"}, "seed"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", 1]}, "stop"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_completion_tokens": -3}, "max_completion_tokens"),
    ({"max_tokens": 100000}, "max_tokens"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": 1}}, "include_usage"),
    ({"logprobs": 1}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"n": 2}, "n"),
    ({"model": 5}, "model"),
    ({"messages": [{"role": "user", "content": "x " * 600}]}, "messages"),
]


@pytest.mark.parametrize("patch,param", BAD, ids=[p for _, p in BAD])
def test_bad_fields_are_400_naming_the_field(server, patch, param):
    body = {"model": "tiny-q4", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **patch}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"] and err["type"] == "invalid_request_error"


def test_completions_400_and_unknown_fields_ignored(server):
    h = {"Authorization": f"Bearer {KEY}"}
    for body, param in [({"prompt": ""}, "prompt"), ({"prompt": 3}, "prompt"), ({"prompt": "x", "logprobs": 50}, "logprobs"),
                        ({"prompt": [1, 99999]}, "prompt")]:
        r = httpx.post(server.url + "/v1/completions", json=body, headers=h)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers=h)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2, "frobnicate": {"a": 1},
                                                          "user": "u1", "temperature": 0}, headers=h)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_auth_401_and_404s(server):
    url = server.url
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.get(url + "/health").status_code == 200  # no key needed
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(url + "/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/models", headers=headers).status_code == 401
    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(url + "/v1/chat/completions", json={**body, "model": "gpt-4"}, headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert httpx.get(url + "/v1/models/gpt-4", headers=h).status_code == 404
    assert httpx.get(url + "/v1/models/tiny-q4", headers=h).json()["id"] == "tiny-q4"
    r = httpx.get(url + "/v1/nothing", headers=h)
    assert r.status_code == 404 and r.json()["error"]["message"].startswith("no route")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="bad", max_retries=0).models.list()


def test_queue_full_is_429_with_retry_after(small):
    body = {"prompt": "long one", "max_tokens": 120, "temperature": 0}

    def post(_):
        return httpx.post(small.url + "/v1/completions", json=body, timeout=120)

    with ThreadPoolExecutor(12) as pool:
        rs = list(pool.map(post, range(12)))
    codes = sorted(r.status_code for r in rs)
    assert set(codes) == {200, 429}, codes
    assert codes.count(200) >= 5  # 2 in flight + 3 waiting were all served
    for r in rs:
        if r.status_code == 429:
            assert r.headers["Retry-After"] == "1" and r.json()["error"]["code"] == "rate_limit_exceeded"


def test_batched_equals_one_at_a_time(client):
    """Greedy outputs of 4 concurrent requests equal the same 4 run one at a time, token for token
    (the logprobs show the logits were identical too)."""
    prompts = ["Alpha beta", "One two three four five six", "Zebra", "The rain in Spain falls mainly"]

    def run(p):
        r = chat(client, p, max_tokens=24, temperature=0, logprobs=True)
        return r.choices[0].message.content, [(e.token, e.logprob) for e in r.choices[0].logprobs.content]

    alone = [run(p) for p in prompts]
    for _ in range(2):
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(run, prompts))
        assert together == alone
    assert len({t for t, _ in alone}) == 4


def test_prefix_reuse_across_requests(client, server):
    """The next turn of a chat runs only its new tokens; so does a new chat with the same system
    prompt (the shared prefix), and the answers are the same as without reuse."""
    system = {"role": "system", "content": "You are a terse assistant. " * 12}
    turn1 = [system, {"role": "user", "content": "First question?"}]
    before = server.health()
    r1 = client.chat.completions.create(model="tiny-q4", messages=turn1, max_tokens=10, temperature=0)
    turn2 = turn1 + [{"role": "assistant", "content": r1.choices[0].message.content},
                     {"role": "user", "content": "And then?"}]
    mid = server.health()
    r2 = client.chat.completions.create(model="tiny-q4", messages=turn2, max_tokens=10, temperature=0)
    after = server.health()
    reused = after["prompt_tokens_reused"] - mid["prompt_tokens_reused"]
    assert reused >= r1.usage.prompt_tokens  # the whole first turn's prompt at least
    assert mid["prompt_tokens_reused"] - before["prompt_tokens_reused"] < r1.usage.prompt_tokens
    import lowbit  # the same answer as the server's batched path on a fresh cache, no reuse

    fresh = lowbit.load(server.proc.args[4])
    ids = fresh.tokenizer.encode_chat(turn2, add_generation_prompt=True)
    assert r2.choices[0].message.content == batched_greedy(fresh, ids, 10)


def batched_greedy(llm, ids: list[int], n: int) -> str:
    """Greedy text through Transformer.forward_batch from an empty cache (what the server runs)."""
    import numpy as np

    from lowbit.runtime.kv_cache import KVCache, Segment

    cache = KVCache(llm.args, llm.context_length)
    logits = llm.model.forward_batch([Segment(cache, list(ids), 0)])[0]
    out = []
    for _ in range(n):
        tok = int(np.argmax(logits))
        if tok in llm.tokenizer.eos_token_ids:
            break
        out.append(tok)
        logits = llm.model.forward_batch([Segment(cache, [tok], cache.length)])[0]
    return llm.detokenize(out)


def test_disconnect_stops_generation(server):
    h = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", server.url + "/v1/completions", headers=h, timeout=60,
                      json={"prompt": "go on", "max_tokens": 400, "stream": True, "temperature": 0}) as r:
        seen = 0
        for line in r.iter_lines():
            seen += bool(line)
            if seen >= 3:
                break
    deadline = time.time() + 10
    while server.health()["active"] and time.time() < deadline:
        time.sleep(0.05)
    before = server.health()
    assert before["active"] == 0
    time.sleep(0.5)
    assert server.health()["tokens_generated"] == before["tokens_generated"]  # nothing more generated


def test_load(small):
    """200 requests, 16 at a time: short and long, streaming or not, some clients leaving
    mid-stream. Every request is answered or refused with 429, nothing is a 5xx, the engine ends
    empty and the server's RSS returns to within 5 % of where it was."""
    url = small.url + "/v1/chat/completions"
    warm = [{"messages": [{"role": "user", "content": f"warm {i}"}], "max_tokens": 60} for i in range(6)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda b: httpx.post(url, json=b, timeout=120), warm))
    rss0 = small.rss()
    lock = threading.Lock()
    outcome: dict[str, int] = {}
    latencies: list[float] = []

    def one(i: int) -> None:
        long = i % 3 == 0
        body = {"messages": [{"role": "user", "content": f"request {i} " * (8 if long else 1)}],
                "max_tokens": 60 if long else 8, "temperature": 0.8, "seed": i, "stream": i % 2 == 0}
        t0 = time.perf_counter()
        try:
            if body["stream"]:
                with httpx.stream("POST", url, json=body, timeout=120) as r:
                    status = r.status_code
                    if status == 200:
                        for n, _ in enumerate(r.iter_lines()):
                            if i % 10 == 4 and n >= 4:  # leaves mid-stream
                                status = "left"
                                break
            else:
                status = httpx.post(url, json=body, timeout=120).status_code
        except httpx.HTTPError as e:
            status = type(e).__name__
        with lock:
            outcome[str(status)] = outcome.get(str(status), 0) + 1
            if status == 200:
                latencies.append(time.perf_counter() - t0)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(200)))
    assert set(outcome) <= {"200", "429", "left"}, outcome
    assert outcome.get("200", 0) >= 20 and outcome.get("left", 0) > 0
    deadline = time.time() + 20
    while (h := small.health())["active"] or h["queued"]:
        assert time.time() < deadline
        time.sleep(0.1)
    assert h["idle_caches"] <= 2
    rss1 = small.rss()
    lat = sorted(latencies)
    p50, p99 = statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    print(f"\nload: {outcome}; latency p50 {p50:.3f} s, p99 {p99:.3f} s; RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB")
    assert abs(rss1 - rss0) <= 0.05 * rss0


def test_serve_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "lowbit.cli", "serve", "--help"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "COLUMNS": "200"}).stdout
    for opt in ["--host", "--port", "--threads", "--ctx", "--parallel", "--queue", "--kv-memory", "--prefill-chunk",
                "--api-key", "--model-name", "--method", "--log-level"]:
        assert opt in out
    r = subprocess.run([sys.executable, "-m", "lowbit.cli", "serve", "x.lowbit", "--parallel", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--parallel" in r.stderr and "Traceback" not in r.stderr


def test_create_app_mounts_in_process(tiny):
    """lowbit.serve.create_app returns a plain ASGI app (here driven by Starlette's TestClient)."""
    from starlette.testclient import TestClient

    import lowbit
    from lowbit.serve import create_app

    llm = lowbit.load(tiny)
    app = create_app(llm, model_name="mine", parallel=2)
    with TestClient(app) as c:
        assert c.get("/health").json()["model"] == "mine"
        r = c.post("/v1/completions", json={"model": "mine", "prompt": "abc", "max_tokens": 5, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == batched_greedy(llm, llm.tokenize("abc"), 5)
        assert c.get("/").text.startswith("<!doctype html>")


def test_presence_and_frequency_penalties():
    """OpenAI's penalties (new in SamplingParams for the server): presence once per recent id,
    frequency per occurrence, over the last repetition_context ids; the logits are not modified."""
    import numpy as np

    from lowbit.runtime.sampling import InvalidSamplingParams, SamplingParams, make_sampler

    logits = np.zeros(8, np.float32)
    logits[7] = 0.9
    s = make_sampler(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, repetition_context=3))
    x = s._penalised(logits, [7, 7, 3, 3, 5])  # only the last 3 ids count: 3, 3, 5
    assert x[3] == np.float32(-1.0) and x[5] == np.float32(-0.75) and x[7] == np.float32(0.9)
    assert logits[3] == 0.0
    assert s(np.array([0.0, 0.1, 0.05], np.float32), [1]) == 2  # greedy: 0.1 - 0.75 < 0.05
    assert make_sampler(SamplingParams())(np.array([0.0, 0.1, 0.05], np.float32), [1]) == 1
    with pytest.raises(InvalidSamplingParams, match="presence_penalty"):
        SamplingParams(presence_penalty=2.5)
