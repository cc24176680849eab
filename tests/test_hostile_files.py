"""Hostile files: a corpus of crafted, checksum-valid .lowbit files and a seeded fuzz, run in
worker subprocesses (tests/hostile_models.py), so a crash fails the test and names the file.

Every corpus case is refused with the format's or the runtime's own error (or, for the siblings
that are merely unusual, loads and runs); none crashes or hangs; under NUMBA_BOUNDSCHECK=1 no
kernel raises an index error on a file that loads. The fuzz: 0 signals, 0 exceptions other than
lowbit's own.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import hostile_models as H
import pytest

WORKER = Path(H.__file__)
JOB_TIMEOUT = 120.0  # seconds one job may take once the worker's kernels are compiled
FIRST_JOB_TIMEOUT = 1200.0  # a worker's first job may compile every kernel cold (bounds-checked:
# minutes on a busy 2-core machine, once; numba caches them)
FUZZ_SEED = 20261201
FUZZ_COUNT = 2000


# -- running jobs in workers ---------------------------------------------------------------------


def run_jobs(jobs: list[dict], env: dict[str, str] | None = None, workers: int = 2) -> dict[str, dict]:
    """Run jobs in `workers` worker processes; a worker that dies or hangs marks the job it was on
    as crashed/hung and a new worker continues with the rest."""
    chunks = [jobs[i::workers] for i in range(workers)]
    results: dict[str, dict] = {}
    threads = [threading.Thread(target=_run_chunk, args=(c, env, results)) for c in chunks if c]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _pump(stream, lines: queue.Queue) -> None:
    for x in stream:
        lines.put(x)
    lines.put(None)


def _run_chunk(jobs: list[dict], env: dict[str, str] | None, results: dict[str, dict]) -> None:
    pending = list(jobs)
    while pending:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})},
        )
        proc.stdin.write(json.dumps(pending))
        proc.stdin.close()
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        current = None
        done_names: set[str] = set()
        while True:
            try:
                line = lines.get(timeout=JOB_TIMEOUT if done_names else FIRST_JOB_TIMEOUT)
            except queue.Empty:
                proc.kill()
                results[current or pending[0]["name"]] = {"outcome": "hung"}
                done_names.add(current or pending[0]["name"])
                break
            if line is None:
                rc = proc.wait()
                if current is not None:
                    results[current] = {"outcome": "crashed", "returncode": rc}
                    done_names.add(current)
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "start" in msg:
                current = msg["start"]
            else:
                results[msg["done"]] = msg
                done_names.add(msg["done"])
                current = None
        proc.wait()
        rest = [j for j in pending if j["name"] not in done_names]
        if len(rest) == len(pending):  # the worker could not even start
            for j in rest:
                results[j["name"]] = {"outcome": "crashed", "returncode": proc.returncode}
            return
        pending = rest


# -- the corpus ----------------------------------------------------------------------------------

INT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size")
L0 = "model.layers.0."
MATRICES = [L0 + "self_attn.q_proj.weight", L0 + "self_attn.k_proj.weight", L0 + "self_attn.v_proj.weight",
            L0 + "self_attn.o_proj.weight", L0 + "mlp.gate_proj.weight", L0 + "mlp.up_proj.weight",
            L0 + "mlp.down_proj.weight", "model.embed_tokens.weight", "lm_head.weight",
            "model.layers.1.mlp.down_proj.weight"]
VECTORS = [L0 + "input_layernorm.weight", L0 + "post_attention_layernorm.weight", "model.norm.weight",
           "model.layers.1.input_layernorm.weight"]


def config_case(**changes) -> Callable[[], H.Model]:
    def make(variant: str = "mixed") -> H.Model:
        m = H.Model(variant)
        for k, v in changes.items():
            if v is _DROP:
                m.config.pop(k)
            else:
                m.config[k] = v
        return m
    return make


_DROP = object()


def corpus() -> list[tuple[str, Callable[[], H.Model], str, Callable | None]]:
    """(name, build, expected outcome "refused" / "ok", optional header edit)."""
    cases: list[tuple[str, Callable[[], H.Model], str, Callable | None]] = []

    def add(name, build, expect="refused", edit=None):
        cases.append((f"{name} #{len(cases)}", build, expect, edit))

    for variant in H.VARIANTS:
        add(f"control-{variant}", lambda v=variant: H.Model(v), "ok")
    # every config integer: off by one, doubled, zero, negative, huge, wrong type
    for f in INT_FIELDS:
        v = H.BASE_CONFIG[f]
        for label, value in [("plus1", v + 1), ("minus1", v - 1), ("double", 2 * v), ("zero", 0),
                             ("negative", -v), ("huge", 1 << 31), ("2e40", 1 << 40), ("bool", True),
                             ("float", float(v)), ("string", str(v)), ("null", None), ("list", [v])]:
            expect = "refused"
            if f == "head_dim" and label in ("zero", "null"):
                expect = "ok" if label == "zero" else "refused"  # 0 = derive hidden / heads (16)
            add(f"config-{f}-{label}", config_case(**{f: value}), expect)
        add(f"config-{f}-missing", config_case(**{f: _DROP}), "ok" if f == "head_dim" else "refused")
    # the other fields: types and ranges; unusual-but-valid siblings load
    for f, value, expect in [
        ("max_position_embeddings", 0, "refused"), ("max_position_embeddings", -1, "refused"),
        ("max_position_embeddings", 1 << 40, "refused"), ("max_position_embeddings", 256.0, "refused"),
        ("max_position_embeddings", True, "refused"), ("max_position_embeddings", 1 << 24, "ok"),
        ("max_position_embeddings", 257, "ok"), ("max_position_embeddings", 8, "ok"),
        ("rms_norm_eps", 64, "refused"), ("rms_norm_eps", -1e-5, "refused"), ("rms_norm_eps", True, "refused"),
        ("rms_norm_eps", "1e-5", "refused"), ("rms_norm_eps", None, "refused"), ("rms_norm_eps", 0, "ok"),
        ("rope_theta", 0, "refused"), ("rope_theta", -1.0, "refused"), ("rope_theta", "10000", "refused"),
        ("rope_theta", True, "refused"), ("rope_theta", 10000, "ok"),
        ("rope_scaling", {"rope_type": "llama3", "factor": 0}, "refused"),
        ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, "refused"),
        ("rope_scaling", {"rope_type": "linear", "factor": "x"}, "refused"),
        ("rope_scaling", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                          "original_max_position_embeddings": 64}, "ok"),  # masked where it divides by 0
        ("rope_scaling", "linear", "refused"), ("rope_scaling", [1], "refused"),
        ("rope_scaling", {"rope_type": "linear", "factor": 2.0}, "ok"),
        ("sliding_window", True, "refused"), ("sliding_window", 0, "refused"), ("sliding_window", -1, "refused"),
        ("sliding_window", 1 << 40, "refused"), ("sliding_window", 2.5, "refused"), ("sliding_window", "24", "refused"),
        ("sliding_window", 1, "ok"), ("sliding_window", 3, "ok"), ("sliding_window", 1 << 30, "ok"),
        ("hidden_act", "gelu", "refused"), ("hidden_act", 1, "refused"), ("hidden_act", None, "refused"),
        ("hidden_act", "relu2", "ok"),
        ("tie_word_embeddings", "yes", "refused"), ("tie_word_embeddings", 1, "refused"),
        ("tie_word_embeddings", True, "ok"),
        ("attention_bias", 1, "refused"), ("attention_bias", "false", "refused"),
        ("bos_token_id", 384, "refused"), ("bos_token_id", -1, "refused"), ("bos_token_id", 1.0, "refused"),
        ("bos_token_id", True, "refused"), ("bos_token_id", 1 << 63, "refused"), ("bos_token_id", 383, "ok"),
        ("bos_token_id", None, "ok"),
        ("eos_token_id", [384], "refused"), ("eos_token_id", [2, -1], "refused"), ("eos_token_id", "2", "refused"),
        ("eos_token_id", [2.0], "refused"), ("eos_token_id", 2, "ok"), ("eos_token_id", [], "ok"),
        ("activation_bits", 0, "refused"), ("activation_bits", True, "refused"),
        ("source_architecture", 5, "refused"),
    ]:
        add(f"config-{f}-{json.dumps(value)[:40]}", config_case(**{f: value}), expect)
    # the cases
    add("issue-heads-64", config_case(num_attention_heads=64, head_dim=_DROP))
    add("issue-heads-64-keep-head-dim", config_case(num_attention_heads=64))
    add("issue-kv-not-dividing", config_case(num_key_value_heads=3))
    add("issue-kv-not-dividing-derived", config_case(num_attention_heads=6, head_dim=_DROP))
    add("issue-norm-1-element", lambda: H.Model().reshape(L0 + "input_layernorm.weight", (1,)))
    for r in ("self_attn.o_proj", "mlp.down_proj", "mlp.gate_proj"):
        add(f"issue-{r}-1-row", lambda r=r: H.Model().reshape(L0 + r + ".weight", (1, 64 if "o_proj" in r or "gate" in r else 176)))
    add("issue-down-in-88-q2", lambda: H.Model().reshape(L0 + "mlp.down_proj.weight", (64, 88)))
    add("issue-gate-300-rows", lambda: H.Model().reshape(L0 + "mlp.gate_proj.weight", (300, 64)))
    # every tensor one row or column short or long
    for name in MATRICES:
        for label, drow, dcol in [("row-1", -1, 0), ("row+1", 1, 0), ("col-1", 0, -1), ("col+1", 0, 1)]:
            def make(name=name, drow=drow, dcol=dcol):
                m = H.Model()
                out, n_in = m.tensors[name].shape
                return m.reshape(name, (out + drow, n_in + dcol))
            add(f"tensor-{name}-{label}", make)
    for name in VECTORS:
        for label, d in [("short", -1), ("long", 1)]:
            add(f"tensor-{name}-{label}", lambda name=name, d=d: H.Model().reshape(name, (64 + d,)))
        add(f"tensor-{name}-2d", lambda name=name: H.Model().reshape(name, (1, 64)))
        add(f"tensor-{name}-q8", lambda name=name: H.Model().reshape(name, (1, 64), encoding="q8"))
    # missing / extra tensors
    for name in [*MATRICES[:7], *VECTORS[:3], "model.embed_tokens.weight", "lm_head.weight"]:
        def drop(name=name):
            m = H.Model()
            del m.tensors[name]
            return m
        add(f"missing-{name}", drop)
    def extra():
        m = H.Model()
        m.tensors["model.layers.2.mlp.up_proj.weight"] = m.tensors[L0 + "mlp.up_proj.weight"]
        return m
    add("extra-layer-tensor", extra)
    def bias(shape, attention_bias=True):
        def make():
            m = H.Model()
            m.config["attention_bias"] = attention_bias
            m.tensors[L0 + "self_attn.q_proj.bias"] = H.encode(L0 + "self_attn.q_proj.bias", shape, "mixed")
            return m
        return make
    add("bias-short", bias((63,)))
    add("bias-long", bias((65,)))
    add("bias-ok", bias((64,)), "ok")
    # tokenizer and metadata
    def tok(**changes):
        def make():
            m = H.Model()
            m.tokenizer.update(changes)
            return m
        return make
    add("tokenizer-blob-missing", tok(blob="missing.json"))
    add("tokenizer-kind-unknown", tok(kind="wordpiece"))
    add("tokenizer-kind-int", tok(kind=3))
    add("tokenizer-template-int", tok(chat_template=5))
    add("tokenizer-template-syntax", tok(chat_template="{% for %}"))
    add("tokenizer-template-huge-string", tok(chat_template="{{ 'a' * (2**33) }}"))
    add("tokenizer-template-huge-pow", tok(chat_template="{{ 2 ** (2 ** 40) }}"))
    add("tokenizer-template-recursion", tok(chat_template="{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"))
    add("tokenizer-template-type-error", tok(chat_template="{{ messages + 1 }}"))
    add("tokenizer-template-loop", tok(chat_template="{% set s = 'a' * 20000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"))
    add("tokenizer-template-doubling", tok(chat_template="{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"))
    add("tokenizer-template-center", tok(chat_template="{{ 'a'|center(8589934592) }}"))
    add("tokenizer-template-format", tok(chat_template="{{ '%8589934592d' % 1 }}"))
    add("tokenizer-special-tokens-int", tok(special_tokens=[1, 2]))
    add("tokenizer-add-bos-string", tok(add_bos_token="yes"))
    def tok_meta_not_object():
        m = H.Model()
        m.tokenizer = ["tokenizers"]
        return m
    add("tokenizer-meta-list", tok_meta_not_object)
    def bad_blob():
        m = H.Model()
        m.blobs["tokenizer.json"] = b"\xff\xfe not json"
        return m
    add("tokenizer-json-garbage", bad_blob)
    def small_vocab():  # consistent tensors, but the tokenizer has 384 ids
        m = config_case(vocab_size=300)()
        m.reshape("model.embed_tokens.weight", (300, 64)).reshape("lm_head.weight", (300, 64))
        return m
    add("tokenizer-larger-than-vocab", small_vocab)
    def big_vocab():
        m = config_case(vocab_size=400)()
        return m.reshape("model.embed_tokens.weight", (400, 64)).reshape("lm_head.weight", (400, 64))
    add("vocab-padded-larger", big_vocab, "ok")
    def generation(value):
        def make():
            m = H.Model()
            m.extra_meta["generation"] = value
            return m
        return make
    add("generation-list", generation([0.7]))
    add("generation-temperature-string", generation({"temperature": "hot"}))
    add("generation-top-k-float", generation({"top_k": 2.5}))
    add("generation-do-sample-int", generation({"do_sample": 1}))
    add("generation-ok", generation({"temperature": 0.7, "top_k": 20, "do_sample": True}), "ok")
    def config_not_object():
        m = H.Model()
        m.config = [1, 2]
        return m
    add("config-list", config_not_object)
    # header-level edits (CRC recomputed): the reader's own errors
    add("header-not-object", H.Model, "refused", lambda h: b"[1, 2]")
    add("header-negative-shape", H.Model, "refused",
        lambda h: {**h, "tensors": [{**t, "shape": [-1, 64]} if i == 0 else t for i, t in enumerate(h["tensors"])]})
    add("header-metadata-list", H.Model, "refused", lambda h: {**h, "metadata": []})
    add("header-not-json", H.Model, "refused", lambda h: b"{not json")
    add("header-deep-nesting", H.Model, "refused", lambda h: b"[" * 100000 + b"]" * 100000)
    add("header-offset-past-end", H.Model, "refused",
        lambda h: {**h, "tensors": [{**t, "offset": 1 << 40} if i == 0 else t for i, t in enumerate(h["tensors"])]})
    add("header-part-shape", H.Model, "refused",
        lambda h: {**h, "tensors": [_edit_part(t) if i == 0 else t for i, t in enumerate(h["tensors"])]})
    add("header-group-size", H.Model, "refused",
        lambda h: {**h, "tensors": [{**t, "params": {"group_size": 48}} if t["encoding"] == "q4" else t for t in h["tensors"]]})
    add("header-encoding-unknown", H.Model, "refused",
        lambda h: {**h, "tensors": [{**t, "encoding": "q5"} if i == 0 else t for i, t in enumerate(h["tensors"])]})
    add("header-duplicate-tensor", H.Model, "refused", lambda h: {**h, "tensors": h["tensors"] + h["tensors"][:1]})
    return cases


def _edit_part(t: dict) -> dict:
    parts = {k: dict(v) for k, v in t["parts"].items()}
    k = sorted(parts)[0]
    parts[k]["shape"] = [parts[k]["shape"][0] + 1, *parts[k]["shape"][1:]]
    return {**t, "parts": parts}


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("hostile")
    out = {}
    for name, build, expect, edit in corpus():
        path = folder / f"case-{len(out):03d}.lowbit"
        build().write(path)
        if edit is not None:
            H.rewrite_header(path, edit)
        out[name] = (path, expect)
    return out


def _boundscheck_env() -> dict[str, str]:
    """Bounds-checked kernels compile into their own cache (numba's cache key ignores the flag),
    kept beside the user-wide kernel cache so that, like it, it outlives a checkout (cold: ~1.5 min)."""
    from lowbit.runtime.kernels.cache import cache_root

    return {"NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(cache_root().parent / "kernels-boundscheck")}


def _failures(results: dict[str, dict], expected: dict[str, str]) -> list[str]:
    bad = []
    for name, expect in expected.items():
        r = results.get(name, {"outcome": "missing"})
        if r["outcome"] in ("crashed", "hung", "unexpected", "missing"):
            bad.append(f"{name}: {r['outcome']} {r.get('returncode', '')} {r.get('error', '')} {r.get('message', '')}")
        elif expect == "ok" and r["outcome"] != "ok":
            bad.append(f"{name}: expected to load and run, got {r}")
        elif expect == "refused" and r["outcome"] != "refused":
            bad.append(f"{name}: expected a refusal, but it loaded and ran")
        elif r["outcome"] == "refused" and "\n" in r["message"]:
            bad.append(f"{name}: refusal is not one line: {r['message']!r}")
    return bad


def test_corpus_refused_without_crash(corpus_files):
    expected = {n: e for n, (_, e) in corpus_files.items()}
    assert sum(e == "refused" for e in expected.values()) >= 150
    jobs = [{"name": n, "path": str(p)} for n, (p, _) in corpus_files.items()]
    results = run_jobs(jobs)
    failures = _failures(results, expected)
    print("\n".join(failures))
    assert failures == []
    # refusals come from validation at load (not from a kernel), except the chat-template cases
    late = [n for n, r in results.items() if r["outcome"] == "refused" and r["stage"] != "load"
            and not n.startswith("tokenizer-template")]
    assert late == []


def test_corpus_under_boundscheck(corpus_files):
    """Files that load run their kernels with bounds checks on: no IndexError anywhere."""
    loading = {n: e for n, (_, e) in corpus_files.items() if e == "ok"}
    jobs = [{"name": n, "path": str(corpus_files[n][0])} for n in loading]
    # one worker first: it compiles (or loads) the bounds-checked kernels once for both
    results = run_jobs(jobs, env=_boundscheck_env(), workers=1)
    fuzz_jobs = [{"name": f"fuzz-{k}", "fuzz": [FUZZ_SEED, k]} for k in range(500)]
    results |= run_jobs(fuzz_jobs, env=_boundscheck_env())
    assert _failures(results, loading) == []
    fuzz = {n: r for n, r in results.items() if n.startswith("fuzz-")}
    assert [f"{n}: {r}" for n, r in fuzz.items() if r["outcome"] not in ("ok", "refused", "unwritable")] == []


def test_fuzz_only_own_errors():
    jobs = [{"name": f"fuzz-{k}", "fuzz": [FUZZ_SEED, k]} for k in range(FUZZ_COUNT)]
    results = run_jobs(jobs)
    assert len(results) == FUZZ_COUNT
    bad = [f"{n}: {r}" for n, r in results.items() if r["outcome"] not in ("ok", "refused", "unwritable")]
    assert bad == []
    outcomes = [r["outcome"] for r in results.values()]
    # the fuzz reaches both sides: files that load and run, and refusals
    assert outcomes.count("ok") >= 50 and outcomes.count("refused") >= 1000


MEMORY_SCRIPT = r"""
import json, resource, sys
import lowbit
paths = json.loads(sys.argv[1])
lm = lowbit.load(paths.pop(0), threads=1)  # warm-up: numba, tokenizers, page cache
lm.logits([1, 2]); lm.close()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for p in paths:
    try:
        lm = lowbit.load(p, threads=1)
        try:
            lm.tokenizer.encode_chat([{"role": "user", "content": "hi"}])
        except lowbit.errors.LowbitError:
            pass
        lm.close()
        outcome = "loaded"
    except (lowbit.errors.LowbitError, lowbit.formats.FormatError) as e:
        outcome = type(e).__name__
    out[p] = (outcome, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
print(json.dumps(out))
"""


def test_load_memory_bounded(tmp_path):
    """No file under 1 MB makes load() (and a chat render) take 100 MB beyond its weights and
    context: the RoPE table follows the context used, a huge head_dim is refused before anything
    is sized from it, a template that multiplies a string by 2^33 is stopped."""
    control = H.Model().write(tmp_path / "control.lowbit")
    cases = {
        "max-positions-2^24": config_case(max_position_embeddings=1 << 24)(),
        "head-dim-2^31": config_case(head_dim=1 << 30, num_attention_heads=1)(),
        "head-dim-2^31-derived": config_case(hidden_size=1 << 31 - 1, head_dim=_DROP, num_attention_heads=1)(),
        "template-2^33": H.Model(),
    }
    cases["template-2^33"].tokenizer["chat_template"] = "{{ 'a' * (2**33) }}"
    paths = {name: m.write(tmp_path / f"{name}.lowbit") for name, m in cases.items()}
    assert all(p.stat().st_size < 1 << 20 for p in paths.values())
    r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, json.dumps([str(control), *map(str, paths.values())])],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    by_name = {name: out[str(p)] for name, p in paths.items()}
    assert by_name["max-positions-2^24"][0] == "loaded"
    assert by_name["head-dim-2^31"][0] == "InvalidModel"
    # KB of peak RSS above the warmed-up process: weights are < 1 MB and the default context's
    # KV cache is allocated untouched, so 100 MB is the whole allowance
    assert max(kb for _, kb in by_name.values()) < 100 * 1024, by_name


def test_config_types_cannot_add_a_numba_specialisation(tmp_path):
    """Values of the right meaning but another JSON type (an int eps, an int theta) are coerced to
    the declared type, so the decode step runs the signature it already has; wrong kinds
    (`sliding_window: true`, `rms_norm_eps: "1e-5"`) were refused in the corpus."""
    import lowbit
    from lowbit.runtime.kernels.attention import attention
    from lowbit.runtime.kernels.decode_step import decode_layers

    lm = lowbit.load(H.Model().write(tmp_path / "control.lowbit"), threads=1)
    lm.logits([1])
    lm.logits([1, 2])
    before = (len(decode_layers.signatures), len(attention.signatures))
    lm.close()
    m = config_case(rms_norm_eps=0, rope_theta=10000, sliding_window=3)()
    lm = lowbit.load(m.write(tmp_path / "ints.lowbit"), threads=1)
    assert type(lm.args.rms_norm_eps) is float and type(lm.args.rope_theta) is float
    lm.logits([1])
    lm.logits([1, 2])
    lm.close()
    assert (len(decode_layers.signatures), len(attention.signatures)) == before


HOSTILE_TEMPLATES = {
    "string-times-2^33": ("{{ 'a' * (2**33) }}", "sequence of 1 × 8589934592"),
    "list-times": ("{{ [1] * 10000000 }}", "sequence"),
    "power": ("{{ 2 ** (2 ** 40) }}", "2 \\*\\* 1099511627776"),
    "square-in-loop": ("{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
                       "integer too large"),
    "doubling-concat": ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                        "string of"),
    "doubling-plus": ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
                      "sequence of"),
    "center-filter": ("{{ 'a'|center(8589934592) }}", "size of 8589934592"),
    "ljust-method": ("{{ 'a'.ljust(8589934592) }}", "size of 8589934592"),
    "percent-width": ("{{ '%8589934592d' % 1 }}", "huge width"),
    "format-width": ("{{ '{:>8589934592}'.format(1) }}", "huge width"),
    "format-filter-width": ("{{ '%8589934592d'|format(1) }}", "huge width"),
    "output-size": ("{% for i in range(100000) %}{{ 'a' * 100 }}{% endfor %}", "rendered prompt exceeds"),
    "recursion": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    "overflow": ("{{ 10.0 ** 400 }}", "OverflowError"),
    "nested-loop": ("{% set s = 'a' * 20000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
                    "longer than 0.5 s"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TEMPLATES))
def test_hostile_templates_are_bounded(case, monkeypatch):
    import time

    from lowbit.runtime import chat_template
    from lowbit.runtime.chat_template import ChatTemplateError, render_chat_template

    monkeypatch.setattr(chat_template, "TIME_LIMIT_S", 0.5)
    template, match = HOSTILE_TEMPLATES[case]
    t0 = time.perf_counter()
    with pytest.raises(ChatTemplateError, match=match) as err:
        render_chat_template(template, [{"role": "user", "content": "hi"}])
    assert "\n" not in str(err.value)
    assert time.perf_counter() - t0 < 3.0


def test_long_conversations_still_render():
    """The size bound grows with the input: a 2 MB message renders (8 × the input is allowed)."""
    from tiny_models import CHATML

    from lowbit.runtime.chat_template import MAX_CHARS, render_chat_template

    content = "word " * (MAX_CHARS // 5 + 1000)
    text = render_chat_template(CHATML, [{"role": "user", "content": content}] * 2)
    assert text.count(content) == 2


def test_config_coercion_follows_the_annotations():
    """ModelArgs.from_dict coerces by the declared types, so a field added later (a dataclass
    with one more annotated field here) gets the same treatment with no code of its own."""
    from dataclasses import dataclass

    from lowbit.errors import InvalidModel
    from lowbit.runtime.config import ModelArgs

    base = {k: v for k, v in H.BASE_CONFIG.items()}
    args = ModelArgs.from_dict({**base, "rms_norm_eps": 0, "rope_theta": 500000, "eos_token_id": 2, "unknown": [1]})
    assert type(args.rms_norm_eps) is float and type(args.rope_theta) is float and args.eos_token_id == [2]

    @dataclass
    class Newer(ModelArgs):
        final_logit_softcapping: float | None = None
        layer_types: list[str] | None = None

    assert Newer.from_dict({**base, "final_logit_softcapping": 30}).final_logit_softcapping == 30.0
    for field, value in [("final_logit_softcapping", True), ("final_logit_softcapping", "30"),
                         ("layer_types", ["full", 1]), ("layer_types", "full"), ("hidden_size", 64.0),
                         ("hidden_size", True), ("tie_word_embeddings", 0), ("rope_scaling", "linear"),
                         ("hidden_size", 1 << 40)]:
        with pytest.raises(InvalidModel, match=field):
            Newer.from_dict({**base, field: value})
    with pytest.raises(InvalidModel, match="lacks field 'vocab_size'"):
        ModelArgs.from_dict({k: v for k, v in base.items() if k != "vocab_size"})
